"""GPUs: what this host has, how busy they are, and which replica holds which.

`model` is the leaf (GpuInfo, the one sample type `GpuSample`, the `GpuInventory` seam);
`nvml` (the only pynvml importer), `cdi` and `fake` are inventories and `inventory` picks one
at start; `placement` is the pure choice of devices for a new replica and `ledger` the
host-wide record of who holds what. May import `config` only.
"""
