"""Redis high availability: real Sentinel fault tests (one primary, two replicas, three
Sentinels on loopback) and the Sentinel settings of every client."""
