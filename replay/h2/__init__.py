"""HTTP/2 and gRPC: a passive reader (``reader.H2Connection``), HPACK for an observer
(``hpack_passive``), gRPC messages and protobuf decoding (``grpc``)."""

from replay.h2.reader import PREFACE, H2Connection, looks_like_h2_frames

__all__ = ["PREFACE", "H2Connection", "looks_like_h2_frames"]
