//! gRPC channels to the replicas (mTLS, operator credentials): one per replica, made on
//! first use and forgotten when a call over it fails (the replica may have been restarted).

use std::collections::HashMap;

use palisade_policy::manifest::{Key, Object};
use palisade_proto::v1::introspection_client::IntrospectionClient;
use palisade_proto::v1::{GetObjectsRequest, HeldObject, ObjectKey};
use tonic::transport::Channel;

use crate::replicas::Handle;

#[derive(Default)]
pub struct Channels(HashMap<u64, Channel>);

impl Channels {
    pub async fn get(&mut self, r: &Handle, id: u64) -> anyhow::Result<Channel> {
        if let Some(c) = self.0.get(&id) {
            return Ok(c.clone());
        }
        let c = palisadectl::remote::channel(&r.conn(id)).await?;
        self.0.insert(id, c.clone());
        Ok(c)
    }

    pub fn forget(&mut self, id: u64) {
        self.0.remove(&id);
    }

    /// The objects `keys` name as replica `id` holds them (`None`: it holds no such object),
    /// with their owners, at the revision it has applied.
    pub async fn objects(
        &mut self,
        r: &Handle,
        id: u64,
        keys: &[Key],
    ) -> anyhow::Result<(u64, Vec<Option<(String, Object)>>)> {
        let channel = self.get(r, id).await?;
        let request = GetObjectsRequest {
            objects: keys
                .iter()
                .map(|(kind, name)| ObjectKey {
                    kind: kind.to_string(),
                    name: name.clone(),
                })
                .collect(),
            consistent: false,
        };
        let answer = IntrospectionClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .get_objects(request)
            .await;
        let answer = match answer {
            Ok(a) => a.into_inner(),
            Err(e) => {
                self.forget(id);
                anyhow::bail!("replica {id} did not answer GetObjects: {e}");
            }
        };
        anyhow::ensure!(
            answer.objects.len() == keys.len(),
            "replica {id} answered {} objects for {} asked",
            answer.objects.len(),
            keys.len()
        );
        let held = keys
            .iter()
            .zip(answer.objects)
            .map(|((kind, name), h)| held(*kind, name, h))
            .collect::<anyhow::Result<_>>()?;
        Ok((answer.revision, held))
    }
}

fn held(
    kind: palisade_policy::k8s::Kind,
    name: &str,
    h: HeldObject,
) -> anyhow::Result<Option<(String, Object)>> {
    if !h.found {
        return Ok(None);
    }
    let object = Object::from_json(kind, &h.json)
        .map_err(|e| anyhow::anyhow!("{kind} {name}: the replica's JSON does not read: {e}"))?;
    Ok(Some((h.owner, object)))
}
