"""Traffic as data: decode, reassemble, parse HTTP/1.x into Exchanges, file formats, replay.

Never imports ``netconfig`` or ``appliance``; needs no root.
"""

from replay import _native

_native.install()  # a compiled module older than its source is not used (see replay/_native.py)
