"""fedjax_room.coordinator"""
