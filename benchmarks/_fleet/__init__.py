"""The fleet simulator's parts: a small HTTP/1.1 client, virtual devices, worker processes, the stack."""
