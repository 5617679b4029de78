"""fedjax_room.dp"""
