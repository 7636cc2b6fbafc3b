//! The chaos control subject: `falcon.ctl.<node>.kill.<actor>` kills a
//! child of a running runtime (its supervisor restarts it). Only served
//! when `chaos.enabled`.

/// The control subject for killing `actor` on `node`.
pub fn kill_subject(node: &str, actor: &str) -> String {
    format!("falcon.ctl.{node}.kill.{actor}")
}

/// Serves `falcon.ctl.<node>.kill.<actor>`: kills this runtime's child of
/// that name (`payment`, `wallet-relay`, `payment-deadlines`, … or `any` for
/// one at random) and replies with what it killed. The supervisor restarts
/// it. Only runs when `chaos.enabled`.
pub async fn serve(client: async_nats::Client, node: String, instance: String) {
    use futures::StreamExt;
    let Ok(mut sub) = client.subscribe(kill_subject(&node, "*")).await else {
        tracing::error!("chaos control: cannot subscribe");
        return;
    };
    tracing::warn!(node = %node, "chaos control enabled: actors may be killed on request");
    while let Some(msg) = sub.next().await {
        let target = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let prefix = format!("{instance}/");
        let names: Vec<String> = ractor::registry::registered()
            .into_iter()
            .filter(|n| n.starts_with(&prefix) && !n.ends_with("/supervisor"))
            .collect();
        // A target names a child (`wallet-relay`, `wallet-2`) or an actor's
        // loop label (`wallet`): every partition's loop of it.
        let victims: Vec<String> = if target == "any" {
            names
                .get(rand::random_range(0..names.len().max(1)))
                .cloned()
                .into_iter()
                .collect()
        } else {
            let exact = format!("{prefix}{target}");
            let loops = format!("{exact}-");
            names
                .iter()
                .filter(|n| {
                    **n == exact
                        || n.strip_prefix(&loops)
                            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                })
                .cloned()
                .collect()
        };
        let killed_all: Vec<String> = victims
            .into_iter()
            .filter_map(|name| {
                ractor::registry::where_is(name.clone()).map(|cell| {
                    tracing::warn!(actor = %name, "chaos: killing");
                    cell.kill();
                    name
                })
            })
            .collect();
        let killed = (!killed_all.is_empty()).then(|| killed_all.join(","));
        if let Some(reply) = msg.reply {
            let body = serde_json::json!({ "node": node, "instance": instance, "killed": killed });
            let _ = client.publish(reply, body.to_string().into()).await;
        }
    }
}
