"""Network policy: the flow it decides on, the match criteria of its rules, and the policy."""
