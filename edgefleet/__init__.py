"""edgefleet: the on-device agent (edgefleet.agent) and the update server (edgefleet.server).

Both live in the repository's agent/ and server/ folders; this package holds them under one
import name so that nothing else called `agent` or `server` in site-packages collides."""
