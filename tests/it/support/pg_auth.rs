//! A PostgreSQL server that only authenticates: it answers an `SSLRequest` with `N`, asks for a
//! cleartext password, records the password it receives, then refuses the login with `28P01`
//! (invalid password) and hangs up, as a real server does for a wrong password.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `SSLRequest` code (PostgreSQL protocol, "Message Formats").
const SSL_REQUEST: u32 = 80_877_103;

/// A listening peer; the passwords clients sent, in order.
pub struct PgAuthPeer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    passwords: Arc<Mutex<Vec<String>>>,
}

impl PgAuthPeer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let passwords = Arc::new(Mutex::new(Vec::new()));
        let seen = passwords.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(p) = serve(stream) {
                    seen.lock().unwrap().push(p);
                }
            }
        });
        Self { addr, passwords }
    }

    /// Every password received so far.
    pub fn passwords(&self) -> Vec<String> {
        self.passwords.lock().unwrap().clone()
    }
}

fn read_u32(s: &mut TcpStream) -> Option<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).ok()?;
    Some(u32::from_be_bytes(b))
}

fn read_body(s: &mut TcpStream, len: u32) -> Option<Vec<u8>> {
    let mut body = vec![0u8; usize::try_from(len.checked_sub(4)?).ok()?];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn serve(mut s: TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut len = read_u32(&mut s)?;
    let mut body = read_body(&mut s, len)?;
    if body.get(..4) == Some(&SSL_REQUEST.to_be_bytes()[..]) {
        s.write_all(b"N").ok()?;
        len = read_u32(&mut s)?;
        body = read_body(&mut s, len)?;
    }
    let _startup = body;
    // AuthenticationCleartextPassword.
    s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).ok()?;
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag).ok()?;
    if tag[0] != b'p' {
        return None;
    }
    let len = read_u32(&mut s)?;
    let body = read_body(&mut s, len)?;
    let password = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (
            b'M',
            "password authentication failed for user \"firebreak\"",
        ),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&u32::try_from(fields.len() + 4).unwrap().to_be_bytes());
    msg.extend_from_slice(&fields);
    let _ = s.write_all(&msg);
    Some(password)
}
