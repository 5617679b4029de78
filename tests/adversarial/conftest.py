"""Adversarial tests (issue 14): each performs an attack against real processes on loopback.

Every module here starts its own room (``fedjax_room.sim.demo.start_room`` or a scripted coordinator),
asserts the attack fails, and that the room then serves an honest run to completion.
"""
