//! Server reflection (v1 and v1alpha): what grpcurl uses to list services.

use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::{Db, TestApp};

#[tokio::test]
async fn reflection_v1_lists_the_user_service_and_describes_it() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel().await);

    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let describe = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "user.v1.UserService".into(),
            ),
        ),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([list, describe]))
        .await
        .unwrap()
        .into_inner();

    let listed = responses.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        listed.message_response
    else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"user.v1.UserService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let described = responses.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        described.message_response
    else {
        panic!("expected a file descriptor, got {described:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    drop(responses);
    app.stop().await;
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_user_service() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel().await);

    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([list]))
        .await
        .unwrap()
        .into_inner();

    let listed = responses.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        listed.message_response
    else {
        panic!("expected a service list, got {listed:?}");
    };
    assert!(
        services
            .service
            .iter()
            .any(|s| s.name == "user.v1.UserService")
    );
    drop(responses);
    app.stop().await;
}
