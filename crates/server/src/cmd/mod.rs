//! Commands that act on the connection or the server: one file per family.

pub mod acl;
pub mod backup;
pub mod cluster;
pub mod connection;
pub mod introspection;
pub mod member;
pub mod placement;
pub mod pubsub;
pub mod reshard;
pub mod slowlog;
pub mod transactions;

use crate::dispatch::ConnHandler;

pub const COMMANDS: &[(&str, ConnHandler)] = &[
    ("ping", connection::ping),
    ("subscribe", pubsub::subscribe_channels),
    ("psubscribe", pubsub::subscribe_patterns),
    ("ssubscribe", pubsub::subscribe_shard),
    ("unsubscribe", pubsub::unsubscribe_channels),
    ("punsubscribe", pubsub::unsubscribe_patterns),
    ("sunsubscribe", pubsub::unsubscribe_shard),
    ("publish", pubsub::publish),
    ("spublish", pubsub::spublish),
    ("pubsub|channels", pubsub::pubsub_channels),
    ("pubsub|shardchannels", pubsub::pubsub_channels),
    ("pubsub|numsub", pubsub::pubsub_numsub),
    ("pubsub|shardnumsub", pubsub::pubsub_numsub),
    ("pubsub|numpat", pubsub::pubsub_numpat),
    ("echo", connection::echo),
    ("hello", connection::hello),
    ("select", connection::select),
    ("quit", connection::quit),
    ("reset", connection::reset),
    ("auth", acl::auth),
    ("acl|setuser", acl::setuser),
    ("acl|deluser", acl::deluser),
    ("acl|getuser", acl::getuser),
    ("acl|list", acl::list),
    ("acl|users", acl::users),
    ("acl|whoami", acl::whoami),
    ("acl|cat", acl::cat),
    ("acl|genpass", acl::genpass),
    ("acl|log", acl::log),
    ("acl|dryrun", acl::dryrun),
    ("acl|save", acl::no_file),
    ("acl|load", acl::no_file),
    ("client|id", connection::client_id),
    ("client|setname", connection::client_setname),
    ("client|getname", connection::client_getname),
    ("client|setinfo", connection::client_setinfo),
    ("client|list", connection::client_list),
    ("client|info", connection::client_info),
    ("client|kill", connection::client_kill),
    ("client|no-evict", connection::client_on_off),
    ("client|no-touch", connection::client_on_off),
    ("multi", transactions::multi),
    ("exec", transactions::exec),
    ("discard", transactions::discard),
    ("watch", transactions::watch),
    ("unwatch", transactions::unwatch),
    ("command", introspection::command),
    ("command|count", introspection::command_count),
    ("command|info", introspection::command_info),
    ("command|docs", introspection::command_docs),
    ("command|list", introspection::command_list),
    ("command|getkeys", introspection::command_getkeys),
    ("info", introspection::info),
    ("config|get", introspection::config_get),
    ("config|set", introspection::config_set),
    ("config|resetstat", introspection::config_resetstat),
    ("latency|histogram", introspection::latency_histogram),
    ("slowlog|get", slowlog::slowlog_get),
    ("slowlog|len", slowlog::slowlog_len),
    ("slowlog|reset", slowlog::slowlog_reset),
    ("slowlog|help", slowlog::slowlog_help),
    ("time", introspection::time),
    ("lastsave", introspection::lastsave),
    ("debug", introspection::debug),
    ("cluster|keyslot", cluster::keyslot),
    ("asking", cluster::accepted),
    ("readonly", cluster::accepted),
    ("readwrite", cluster::accepted),
    ("cluster|myid", cluster::myid),
    ("cluster|slots", cluster::slots),
    ("cluster|shards", cluster::shards),
    ("cluster|nodes", cluster::nodes),
    ("cluster|info", cluster::info),
    ("cluster|countkeysinslot", cluster::countkeysinslot),
    ("cluster|getkeysinslot", cluster::getkeysinslot),
];
