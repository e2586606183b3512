// With the tch backend, give the binary an rpath to $LIBTORCH/lib so it runs without
// LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TCH").is_some() {
        if let Ok(lt) = std::env::var("LIBTORCH") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lt}/lib");
        }
    }
}
