"""fedjax_room.site"""
