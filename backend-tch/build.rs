// Tests and examples of this crate run against the libtorch named by $LIBTORCH: give them an
// rpath to its lib/ folder so no LD_LIBRARY_PATH is needed.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(lt) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lt}/lib");
    }
}
