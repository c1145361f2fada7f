"""Consoles: bytes from any source and sink (transport) to a bounded, many-reader stream (stream),
the sans-IO pattern matcher and command framing (match), the Console users drive (console), and
the typed seam the app holds (like)."""
