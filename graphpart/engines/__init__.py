"""Engines: one step driver over a schedule, and the transports that move its calls and tensors."""
