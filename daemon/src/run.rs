//! `tandem run -c FILE`: the gateway in the foreground.
