//! placeholder to let the workspace resolve; replaced below
