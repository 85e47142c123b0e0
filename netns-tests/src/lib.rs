//! The namespace lab (SPEC §9): builds the test topology out of network namespaces and veths,
//! runs two `tandem` daemons, drives ping/iperf3 and probe streams, runs failover drills and the
//! benchmark. Everything it creates has a unique name and is torn down on `Drop`.
