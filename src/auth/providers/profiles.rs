//! The profile shapes of Google, Naver and Kakao, mapped to one [`ExternalIdentity`]. Pure
//! functions over the documented JSON, so each shape is tested with recorded bodies.

use super::{ExternalIdentity, ProviderError};
use serde::Deserialize;

/// Google's OpenID Connect userinfo (`https://openidconnect.googleapis.com/v1/userinfo`).
#[derive(Deserialize)]
struct GoogleUserInfo {
    sub: String,
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    name: Option<String>,
    given_name: Option<String>,
    picture: Option<String>,
}

/// Naver's profile API (`https://openapi.naver.com/v1/nid/me`): a result code around the data.
#[derive(Deserialize)]
struct NaverEnvelope {
    resultcode: String,
    message: Option<String>,
    response: Option<NaverProfile>,
}

#[derive(Deserialize)]
struct NaverProfile {
    id: String,
    email: Option<String>,
    nickname: Option<String>,
    name: Option<String>,
    profile_image: Option<String>,
}

/// Kakao's user API (`https://kapi.kakao.com/v2/user/me`): a numeric id and an account object.
#[derive(Deserialize)]
struct KakaoUser {
    id: i64,
    kakao_account: Option<KakaoAccount>,
    properties: Option<KakaoProperties>,
}

#[derive(Deserialize)]
struct KakaoAccount {
    email: Option<String>,
    #[serde(default)]
    is_email_valid: Option<bool>,
    #[serde(default)]
    is_email_verified: Option<bool>,
    profile: Option<KakaoProfile>,
}

#[derive(Deserialize)]
struct KakaoProfile {
    nickname: Option<String>,
    profile_image_url: Option<String>,
}

#[derive(Deserialize)]
struct KakaoProperties {
    nickname: Option<String>,
    profile_image: Option<String>,
}

fn parse<'a, T: Deserialize<'a>>(provider: &str, body: &'a [u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(body)
        .map_err(|e| ProviderError::BadProfile(format!("{provider} profile: {e}")))
}

/// Maps a Google userinfo body. An unverified e-mail is not trusted.
pub fn google(provider: &str, body: &[u8]) -> Result<ExternalIdentity, ProviderError> {
    let u: GoogleUserInfo = parse(provider, body)?;
    let email = u.email.filter(|_| u.email_verified != Some(false));
    Ok(ExternalIdentity::new(
        provider,
        u.sub,
        email,
        u.name.or(u.given_name),
        u.picture,
    ))
}

/// Maps a Naver profile body; a result code other than `00` is the provider's error.
pub fn naver(provider: &str, body: &[u8]) -> Result<ExternalIdentity, ProviderError> {
    let envelope: NaverEnvelope = parse(provider, body)?;
    let profile = match (envelope.resultcode.as_str(), envelope.response) {
        ("00", Some(p)) => p,
        (code, _) => {
            return Err(ProviderError::BadProfile(format!(
                "naver answered {code}: {}",
                envelope.message.unwrap_or_default()
            )));
        }
    };
    Ok(ExternalIdentity::new(
        provider,
        profile.id,
        profile.email,
        profile.nickname.or(profile.name),
        profile.profile_image,
    ))
}

/// Maps a Kakao user body. Only a valid, verified e-mail is taken.
pub fn kakao(provider: &str, body: &[u8]) -> Result<ExternalIdentity, ProviderError> {
    let u: KakaoUser = parse(provider, body)?;
    let (email, nickname, picture) = match u.kakao_account {
        Some(a) => {
            let trusted = a.is_email_valid != Some(false) && a.is_email_verified != Some(false);
            let (nick, pic) = a
                .profile
                .map(|p| (p.nickname, p.profile_image_url))
                .unwrap_or_default();
            (a.email.filter(|_| trusted), nick, pic)
        }
        None => (None, None, None),
    };
    let (prop_nick, prop_pic) = u
        .properties
        .map(|p| (p.nickname, p.profile_image))
        .unwrap_or_default();
    Ok(ExternalIdentity::new(
        provider,
        u.id.to_string(),
        email,
        nickname.or(prop_nick),
        picture.or(prop_pic),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_userinfo() {
        let body = br#"{"sub":"110169484474386276334","name":"Minji Kim","given_name":"Minji",
            "family_name":"Kim","picture":"https://lh3.googleusercontent.com/a/x","email":"minji@gmail.com",
            "email_verified":true,"locale":"ko"}"#;
        let id = google("google", body).expect("maps");
        assert_eq!(id.subject, "110169484474386276334");
        assert_eq!(id.email.as_deref(), Some("minji@gmail.com"));
        assert_eq!(id.nickname.as_deref(), Some("Minji Kim"));
        let unverified = br#"{"sub":"1","email":"x@y.z","email_verified":false}"#;
        assert_eq!(google("google", unverified).expect("maps").email, None);
    }

    #[test]
    fn naver_profile_and_error() {
        let body = r#"{"resultcode":"00","message":"success","response":{"id":"32742776",
            "nickname":"OpenAPI","profile_image":"https://ssl.pstatic.net/static/pwe/address/img_profile.png",
            "age":"40-49","gender":"F","email":"openapi@naver.com","mobile":"010-0000-0000",
            "mobile_e164":"+821000000000","name":"오픈 API","birthday":"10-01","birthyear":"1900"}}"#;
        let id = naver("naver", body.as_bytes()).expect("maps");
        assert_eq!(id.subject, "32742776");
        assert_eq!(id.email.as_deref(), Some("openapi@naver.com"));
        assert_eq!(id.nickname.as_deref(), Some("OpenAPI"));
        let err = br#"{"resultcode":"024","message":"Authentication failed"}"#;
        assert!(naver("naver", err).is_err());
    }

    #[test]
    fn kakao_user() {
        let body = r#"{"id":123456789,"connected_at":"2022-04-11T01:45:28Z",
            "kakao_account":{"profile_nickname_needs_agreement":false,
            "profile":{"nickname":"홍길동","thumbnail_image_url":"http://yyy.kakao.com/.../img_110x110.jpg",
            "profile_image_url":"http://yyy.kakao.com/dn/.../img_640x640.jpg","is_default_image":false},
            "email_needs_agreement":false,"is_email_valid":true,"is_email_verified":true,
            "email":"sample@sample.com"},"properties":{"nickname":"홍길동카톡"}}"#;
        let id = kakao("kakao", body.as_bytes()).expect("maps");
        assert_eq!(id.subject, "123456789");
        assert_eq!(id.email.as_deref(), Some("sample@sample.com"));
        assert_eq!(id.nickname.as_deref(), Some("홍길동"));
        let bare = br#"{"id":42}"#;
        let id = kakao("kakao", bare).expect("maps");
        assert_eq!((id.subject.as_str(), id.email), ("42", None));
        assert!(kakao("kakao", b"not json").is_err());
    }
}
