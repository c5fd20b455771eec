//! `user.v1.UserService` over gRPC: request messages in, the directory's
//! answer (or its error, mapped in [`crate::error`]) out.

use common::proto::user::v1::{
    CreateUserRequest, DeleteUserRequest, DeleteUserResponse, GetUserRequest, GetUserResponse,
    ListUsersRequest, ListUsersResponse, UpdateUserRequest, user_service_server::UserService,
};
use tonic::{Request, Response, Status};

use crate::{directory::UserDirectory, domain::User};

/// The gRPC face of the [`UserDirectory`].
#[derive(Debug, Clone)]
pub struct UserGrpc {
    directory: UserDirectory,
}

impl UserGrpc {
    /// Serves `directory`.
    pub fn new(directory: UserDirectory) -> Self {
        UserGrpc { directory }
    }
}

impl From<User> for GetUserResponse {
    fn from(user: User) -> Self {
        GetUserResponse {
            name: user.name,
            age: user.age,
            user_id: user.id,
            email: user.email,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let user = self.directory.get(&request.get_ref().user_id).await?;
        Ok(Response::new(user.into()))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let r = request.get_ref();
        let user = self
            .directory
            .create(&r.user_id, &r.name, r.age, &r.email)
            .await?;
        Ok(Response::new(user.into()))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let r = request.get_ref();
        let user = self
            .directory
            .update(&r.user_id, &r.name, r.age, &r.email)
            .await?;
        Ok(Response::new(user.into()))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        self.directory.delete(&request.get_ref().user_id).await?;
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let r = request.get_ref();
        let page = self.directory.list(r.page_size, &r.page_token).await?;
        Ok(Response::new(ListUsersResponse {
            users: page.users.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
