"""Front ends: capture files (pcap, pcapng); later live interfaces and Zeek logs."""
