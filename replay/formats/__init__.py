"""Readers and writers: every format converts to and from ``replay.model.Exchange``."""
