"""fedjax_room.data"""
