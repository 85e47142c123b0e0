//! `tandem check -c FILE`: validate a config and the key files it names.
