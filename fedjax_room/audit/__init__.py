"""fedjax_room.audit"""
