"""fedjax_room.transport"""
