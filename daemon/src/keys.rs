//! `genkey`, `pubkey`, `genpsk`: key material from the OS CSPRNG, base64 like `wg genkey`.
