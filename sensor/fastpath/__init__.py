"""The compiled fast path: packet decoding, the flow table, the stream layer and RTP statistics (numba)."""
