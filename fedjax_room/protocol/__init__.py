"""fedjax_room.protocol"""
