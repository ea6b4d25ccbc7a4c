//! Which Triton API a call belongs to (for a route's `apis` allow-list), and
//! which calls are model repository calls Trident may answer itself.

const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";

/// A family of Triton calls, as a route's `apis` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `infer`, `generate`, `generate_stream`; gRPC `ModelInfer`, `ModelStreamInfer`.
    Infer,
    /// Server and model metadata, model config.
    Metadata,
    /// Server liveness and readiness, model readiness.
    Health,
    Statistics,
    /// Index, load, unload.
    Repository,
    /// System and CUDA shared memory registration.
    SharedMemory,
    Trace,
    Logging,
}

impl Api {
    pub const ALL: [Api; 8] = [
        Api::Infer,
        Api::Metadata,
        Api::Health,
        Api::Statistics,
        Api::Repository,
        Api::SharedMemory,
        Api::Trace,
        Api::Logging,
    ];

    /// The name a route's `apis` uses.
    pub fn name(self) -> &'static str {
        match self {
            Api::Infer => "infer",
            Api::Metadata => "metadata",
            Api::Health => "health",
            Api::Statistics => "statistics",
            Api::Repository => "repository",
            Api::SharedMemory => "shared_memory",
            Api::Trace => "trace",
            Api::Logging => "logging",
        }
    }

    /// The API of an HTTP call; `None`: a path no Triton API has.
    pub fn of_http_path(path: &str) -> Option<Api> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let path = path.strip_suffix('/').unwrap_or(path);
        if path == "/v2" {
            return Some(Api::Metadata);
        }
        let rest = path.strip_prefix("/v2/")?;
        let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
        Some(match first {
            "health" => Api::Health,
            "repository" => Api::Repository,
            "systemsharedmemory" | "cudasharedmemory" => Api::SharedMemory,
            "trace" => Api::Trace,
            "logging" => Api::Logging,
            "models" if tail == "stats" => Api::Statistics,
            "models" => {
                // `{model}[/versions/{v}][/call]`
                let mut segments = tail.split('/').skip(1);
                let mut call = segments.next();
                if call == Some("versions") {
                    call = segments.nth(1);
                }
                match (call, segments.next()) {
                    (None | Some("config"), None) => Api::Metadata,
                    (Some("ready"), None) => Api::Health,
                    (Some("stats"), None) => Api::Statistics,
                    (Some("infer" | "generate" | "generate_stream"), None) => Api::Infer,
                    (Some("trace"), Some("setting")) => Api::Trace,
                    _ => return None,
                }
            }
            _ => return None,
        })
    }

    /// The API of a gRPC method path; `None`: a method Triton's service lacks.
    pub fn of_grpc_method(path: &str) -> Option<Api> {
        let method = path.strip_prefix(SERVICE_PREFIX)?;
        Some(match method {
            "ModelInfer" | "ModelStreamInfer" => Api::Infer,
            "ServerMetadata" | "ModelMetadata" | "ModelConfig" => Api::Metadata,
            "ServerLive" | "ServerReady" | "ModelReady" => Api::Health,
            "ModelStatistics" => Api::Statistics,
            "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => Api::Repository,
            "SystemSharedMemoryStatus"
            | "SystemSharedMemoryRegister"
            | "SystemSharedMemoryUnregister"
            | "CudaSharedMemoryStatus"
            | "CudaSharedMemoryRegister"
            | "CudaSharedMemoryUnregister" => Api::SharedMemory,
            "TraceSetting" => Api::Trace,
            "LogSettings" => Api::Logging,
            _ => return None,
        })
    }
}

/// A route's `apis`: the APIs its clients may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSet {
    /// A bit per [`Api`]; `None`: no list, every call passes (paths of no known API too).
    allowed: Option<u16>,
}

impl ApiSet {
    /// No `apis` key: nothing is refused.
    pub const UNRESTRICTED: ApiSet = ApiSet { allowed: None };

    pub fn only(apis: impl IntoIterator<Item = Api>) -> Self {
        let bits = apis.into_iter().fold(0, |bits, api| bits | 1 << api as u16);
        ApiSet {
            allowed: Some(bits),
        }
    }

    /// What either set allows.
    pub fn union(self, other: ApiSet) -> ApiSet {
        ApiSet {
            allowed: self.allowed.zip(other.allowed).map(|(a, b)| a | b),
        }
    }

    /// Whether a call of `api` (`None`: of no known API) passes.
    pub fn allows(self, api: Option<Api>) -> bool {
        match (self.allowed, api) {
            (None, _) => true,
            (Some(bits), Some(api)) => bits & 1 << api as u16 != 0,
            (Some(_), None) => false,
        }
    }
}

/// A model repository call Trident may fan out to every endpoint of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryCall {
    Load,
    Unload,
    Index,
}

impl RepositoryCall {
    pub fn label(self) -> &'static str {
        match self {
            RepositoryCall::Load => "load",
            RepositoryCall::Unload => "unload",
            RepositoryCall::Index => "index",
        }
    }

    /// `POST /v2/repository/index`, `POST /v2/repository/models/{m}/(load|unload)`.
    pub fn of_http(method: &http::Method, path: &str) -> Option<Self> {
        if method != http::Method::POST {
            return None;
        }
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let rest = path.strip_prefix("/v2/repository/")?;
        if rest == "index" {
            return Some(RepositoryCall::Index);
        }
        let (_, action) = rest.strip_prefix("models/")?.rsplit_once('/')?;
        match action {
            "load" => Some(RepositoryCall::Load),
            "unload" => Some(RepositoryCall::Unload),
            _ => None,
        }
    }

    pub fn of_grpc_method(path: &str) -> Option<Self> {
        match path.strip_prefix(SERVICE_PREFIX)? {
            "RepositoryModelLoad" => Some(RepositoryCall::Load),
            "RepositoryModelUnload" => Some(RepositoryCall::Unload),
            "RepositoryIndex" => Some(RepositoryCall::Index),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_paths_map_to_their_api() {
        for (path, api) in [
            ("/v2", Some(Api::Metadata)),
            ("/v2/", Some(Api::Metadata)),
            ("/v2/health/ready", Some(Api::Health)),
            ("/v2/models/m", Some(Api::Metadata)),
            ("/v2/models/m/config", Some(Api::Metadata)),
            ("/v2/models/m/versions/2", Some(Api::Metadata)),
            ("/v2/models/m/ready", Some(Api::Health)),
            ("/v2/models/m/versions/2/ready", Some(Api::Health)),
            ("/v2/models/m/infer", Some(Api::Infer)),
            ("/v2/models/m/versions/2/infer?x=1", Some(Api::Infer)),
            ("/v2/models/m/generate_stream", Some(Api::Infer)),
            ("/v2/models/m/stats", Some(Api::Statistics)),
            ("/v2/models/stats", Some(Api::Statistics)),
            ("/v2/models/m/trace/setting", Some(Api::Trace)),
            ("/v2/trace/setting", Some(Api::Trace)),
            ("/v2/logging", Some(Api::Logging)),
            ("/v2/repository/index", Some(Api::Repository)),
            ("/v2/repository/models/m/load", Some(Api::Repository)),
            ("/v2/systemsharedmemory/status", Some(Api::SharedMemory)),
            (
                "/v2/cudasharedmemory/region/r/register",
                Some(Api::SharedMemory),
            ),
            ("/v2/models/m/infer/more", None),
            ("/v2/unknown", None),
            ("/metrics", None),
        ] {
            assert_eq!(Api::of_http_path(path), api, "{path}");
        }
    }

    #[test]
    fn grpc_methods_map_to_their_api() {
        let api = |m: &str| Api::of_grpc_method(&format!("{SERVICE_PREFIX}{m}"));
        assert_eq!(api("ModelStreamInfer"), Some(Api::Infer));
        assert_eq!(api("ModelConfig"), Some(Api::Metadata));
        assert_eq!(api("ServerReady"), Some(Api::Health));
        assert_eq!(api("RepositoryModelUnload"), Some(Api::Repository));
        assert_eq!(api("CudaSharedMemoryRegister"), Some(Api::SharedMemory));
        assert_eq!(api("LogSettings"), Some(Api::Logging));
        assert_eq!(api("Nope"), None);
        assert_eq!(Api::of_grpc_method("/other.Service/ModelInfer"), None);
    }

    #[test]
    fn a_list_allows_only_its_apis() {
        let set = ApiSet::only([Api::Infer, Api::Health]);
        assert!(set.allows(Some(Api::Infer)));
        assert!(!set.allows(Some(Api::Repository)));
        assert!(!set.allows(None));
        assert!(ApiSet::UNRESTRICTED.allows(Some(Api::Logging)));
        assert!(ApiSet::UNRESTRICTED.allows(None));
        let both = set.union(ApiSet::only([Api::Metadata]));
        assert!(both.allows(Some(Api::Metadata)) && both.allows(Some(Api::Infer)));
        assert_eq!(set.union(ApiSet::UNRESTRICTED), ApiSet::UNRESTRICTED);
    }

    #[test]
    fn repository_calls() {
        let post = http::Method::POST;
        assert_eq!(
            RepositoryCall::of_http(&post, "/v2/repository/models/m/load"),
            Some(RepositoryCall::Load)
        );
        assert_eq!(
            RepositoryCall::of_http(&post, "/v2/repository/models/a%20b/unload"),
            Some(RepositoryCall::Unload)
        );
        assert_eq!(
            RepositoryCall::of_http(&post, "/v2/repository/index"),
            Some(RepositoryCall::Index)
        );
        assert_eq!(
            RepositoryCall::of_http(&http::Method::GET, "/v2/repository/index"),
            None
        );
        assert_eq!(
            RepositoryCall::of_grpc_method(&format!("{SERVICE_PREFIX}RepositoryModelLoad")),
            Some(RepositoryCall::Load)
        );
    }
}
