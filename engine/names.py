"""What a valid host name and user name look like, for every part of the engine that checks one."""
from __future__ import annotations

import re

# RFC 1123 labels: letters, digits and inner hyphens, at most 63 characters.
HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
# What busybox adduser and login accept.
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
