//! The `claims` filter: authorisation on the claims of the JWT a `jwt` filter
//! verified earlier in the chain.

use async_trait::async_trait;

use crate::chain::{Denial, DenyReason, Filter, Request, Verdict};

pub struct ClaimsFilter {
    /// A claim listing the models the token may call ("*": every model).
    model_claim: Option<String>,
    /// Claim → value it must equal or contain.
    require: Vec<(String, String)>,
}

impl ClaimsFilter {
    pub fn new(model_claim: Option<String>, require: Vec<(String, String)>) -> Self {
        ClaimsFilter {
            model_claim,
            require,
        }
    }
}

#[async_trait]
impl Filter for ClaimsFilter {
    async fn request(&self, request: &mut Request<'_>) -> Verdict {
        let Some(claims) = &request.identity.claims else {
            return Verdict::Deny(Denial::new(
                DenyReason::Unauthenticated,
                "no verified token: a jwt filter must run before this one",
            ));
        };
        if let (Some(claim), Some(model)) = (&self.model_claim, request.model) {
            if !claims.allows(claim, model) && !claims.allows(claim, "*") {
                return Verdict::Deny(Denial::new(
                    DenyReason::PermissionDenied,
                    format!("token does not allow model '{model}'"),
                ));
            }
        }
        for (claim, value) in &self.require {
            if !claims.allows(claim, value) {
                return Verdict::Deny(Denial::new(
                    DenyReason::PermissionDenied,
                    format!("token lacks claim {claim}={value}"),
                ));
            }
        }
        Verdict::Continue
    }

    fn reads_model(&self) -> bool {
        self.model_claim.is_some()
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    use super::*;
    use crate::chain::Identity;
    use crate::jwt::tests::*;
    use crate::jwt::{KeySet, ValidationSettings, Verifier};
    use crate::testing::run;

    fn identity(claims: serde_json::Value) -> Identity {
        let verifier = Verifier::new(ValidationSettings::default(), KeySet::hmac(SECRET));
        Identity {
            tenant: None,
            claims: Some(
                verifier
                    .verify(&sign(Algorithm::HS256, &claims), NOW)
                    .unwrap(),
            ),
        }
    }

    fn denial(filter: &ClaimsFilter, model: Option<&str>, who: Identity) -> Option<Denial> {
        match run(filter, &[], model, who).verdict {
            Verdict::Continue => None,
            Verdict::Deny(denial) => Some(denial),
        }
    }

    #[test]
    fn the_model_claim_must_list_the_model() {
        let filter = ClaimsFilter::new(Some("models".into()), Vec::new());
        let alice = || identity(json!({ "models": ["resnet50", "bert"] }));
        assert_eq!(denial(&filter, Some("bert"), alice()), None);
        assert_eq!(
            denial(&filter, None, alice()),
            None,
            "server-level calls pass"
        );
        let refused = denial(&filter, Some("gpt"), alice()).unwrap();
        assert_eq!(
            (refused.reason, refused.message.as_str()),
            (
                DenyReason::PermissionDenied,
                "token does not allow model 'gpt'"
            )
        );
        assert_eq!(
            denial(&filter, Some("gpt"), identity(json!({ "models": "*" }))),
            None
        );
        assert_eq!(
            denial(
                &filter,
                Some("gpt"),
                identity(json!({ "models": "bert gpt" }))
            ),
            None
        );
        assert!(denial(&filter, Some("gpt"), identity(json!({}))).is_some());
    }

    #[test]
    fn required_claims_must_match() {
        let filter = ClaimsFilter::new(None, vec![("scope".into(), "infer".into())]);
        assert_eq!(
            denial(
                &filter,
                Some("m"),
                identity(json!({ "scope": "read infer" }))
            ),
            None
        );
        assert_eq!(
            denial(&filter, Some("m"), identity(json!({ "scope": ["infer"] }))),
            None
        );
        let refused = denial(&filter, Some("m"), identity(json!({ "scope": "read" }))).unwrap();
        assert_eq!(refused.message, "token lacks claim scope=infer");
        let anonymous = denial(&filter, Some("m"), Identity::default()).unwrap();
        assert_eq!(anonymous.reason, DenyReason::Unauthenticated);
    }
}
