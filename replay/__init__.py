"""Traffic as data: decode, reassemble, parse HTTP/1.x into Exchanges, file formats, replay.

Never imports ``netconfig`` or ``appliance``; needs no root.
"""
