fn main() -> std::process::ExitCode {
    // reqwest is built without a TLS crypto backend of its own; ring is the light one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    core4ctl::main()
}
