"""fedjax_room.local"""
