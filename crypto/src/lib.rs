//! tandem's protocol cryptography, sans-IO: the Noise IKpsk2 handshake, the key schedule, the ESP
//! security association (seal/open in place) and the RFC 6479 anti-replay window.
//! No sockets and no clocks: time and randomness are passed in.
#![forbid(unsafe_code)]
