//! A WAGI service in plain Rust with std and no SDK: the request arrives as CGI
//! environment variables and stdin, the response leaves as CGI headers and a body on stdout.

use std::env;
use std::io::{self, Read, Write};

fn main() {
    let method = env::var("REQUEST_METHOD").unwrap_or_default();
    let path = env::var("PATH_INFO").unwrap_or_default();
    let query = env::var("QUERY_STRING").unwrap_or_default();
    let name = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .filter(|n| !n.is_empty())
        .unwrap_or("world");

    let mut body = Vec::new();
    if io::stdin().read_to_end(&mut body).is_err() {
        print!("Status: 400\nContent-Type: text/plain\n\ncould not read the body\n");
        return;
    }

    let mut out = io::stdout().lock();
    let _ = write!(
        out,
        "Content-Type: text/plain; charset=utf-8\n\n\
         Hello, {name}! (from Rust)\n\
         method: {method}\npath: {path:?}\nbody bytes: {}\n",
        body.len()
    );
}
