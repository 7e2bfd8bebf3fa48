"""Outputs: what is asked on the wire, how an answer is parsed, and which column type it gets."""
