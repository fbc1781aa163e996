"""Sans-I/O state machines: the node's decisions, apart from its sockets.

Nothing in this package imports zmq, asyncio, time, os or socket (a test
enforces it). Each machine takes events and the current time and returns
effects; its state changes only inside `handle()`.
"""
