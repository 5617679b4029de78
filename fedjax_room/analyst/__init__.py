"""fedjax_room.analyst"""
