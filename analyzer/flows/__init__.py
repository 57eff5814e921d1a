"""Flow table, TCP reassembly and flow results."""
