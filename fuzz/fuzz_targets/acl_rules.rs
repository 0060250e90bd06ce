//! ACL SETUSER rules and permission checks: a user built from arbitrary rules (arguments
//! separated by 0x00; the part after 0xff is a request), then the request checked against it
//! and the user described and rebuilt from its own description. Nothing may panic, and a
//! description must rebuild the same user.
#![no_main]

use cairn_server::acl::{Acl, User};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn acl() -> &'static Acl {
    static ACL: OnceLock<Acl> = OnceLock::new();
    ACL.get_or_init(Acl::new)
}

fn table() -> &'static cairn_commands::CommandTable {
    static TABLE: OnceLock<cairn_commands::CommandTable> = OnceLock::new();
    TABLE.get_or_init(|| cairn_commands::CommandTable::load(|_| true))
}

fuzz_target!(|data: &[u8]| {
    let acl = acl();
    let (rules, request) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let rules: Vec<Vec<u8>> = rules.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    let mut user = User::new(b"u", &acl.commands);
    for r in &rules {
        let _ = user.apply(&acl.commands, r);
    }
    let mut again = User::new(b"u", &acl.commands);
    for r in user.rules() {
        again
            .apply(&acl.commands, &r)
            .expect("a user's own description applies");
    }
    assert_eq!(again.describe(), user.describe());
    let args: Vec<Vec<u8>> = request.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    if args[0].is_empty() {
        return;
    }
    if let cairn_commands::Lookup::Found(spec) = table().lookup(&args) {
        let _ = cairn_server::cmd::acl::permitted(acl, &user, spec, &args);
    }
});
