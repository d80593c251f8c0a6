"""The Zeek front end's reading side: log files (`logs`, `files`, `parser`, `base`), the mapping of their values
(`fields`), the join by uid into flow records (`assembler`) and the topology file for the Zeek package
(`topology_file`). The driver and the `ingest-zeek` command are sensor.ingest_zeek."""
