// The agent's messages: the remote plan, the start request, the result and a poll's answer.
#include "flow/agent.h"

#include <gtest/gtest.h>

namespace sdstack::flow {
namespace {

TEST(AgentTest, PlanRoundTrip) {
  RemotePlan plan;
  plan.run = "keen-fox-1";
  plan.argv = {"bash", "-c", "echo 'hi there'"};
  plan.env = {"A=1", "B=two words"};
  plan.work_dir = "work/app";
  plan.artifact_paths = {"./output"};
  plan.artifact_key = "proj-12345678/keen-fox-1";
  plan.grace_seconds = 3;
  plan.secret_names = {"HF_TOKEN"};
  plan.s3 = S3StoreConfig{"http://127.0.0.1:9000", "eu-west-1", "bucket", "p/", false, "", ""};
  plan.s3_deps = {"proj-12345678/early-goose-1"};
  auto back = remote_plan_from_json(remote_plan_to_json(plan));
  ASSERT_TRUE(back.is_ok()) << back.status().message();
  EXPECT_EQ(back->argv, plan.argv);
  EXPECT_EQ(back->env, plan.env);
  EXPECT_EQ(back->work_dir, "work/app");
  EXPECT_EQ(back->secret_names, plan.secret_names);
  ASSERT_TRUE(back->s3.has_value());
  EXPECT_FALSE(back->s3->path_style);
  EXPECT_EQ(back->s3->region, "eu-west-1");
  EXPECT_EQ(back->s3_deps, plan.s3_deps);
  EXPECT_FALSE(remote_plan_from_json("{\"run\": 1}").is_ok());
}

TEST(AgentTest, SecretsNeverEchoedInErrors) {
  AgentSecrets secrets;
  secrets.env = {{"TOKEN", "v@lue"}};
  secrets.s3_secret_key = "s3-secret";
  auto back = agent_secrets_from_json(agent_secrets_to_json(secrets));
  ASSERT_TRUE(back.is_ok());
  EXPECT_EQ(back->env.at("TOKEN"), "v@lue");
  EXPECT_EQ(back->s3_secret_key, "s3-secret");
  auto bad = agent_secrets_from_json("{\"env\": \"s3-secret\"");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().message().find("s3-secret"), std::string::npos);
}

TEST(AgentTest, PollAnswerCarriesWholeLogLines) {
  RemoteResult result{"failed", 3, "exit code 3", "store", {"./missing"}};
  std::string answer = "{\"state\":\"finished\",\"log_size\":120,\"result\":" + remote_result_to_json(result) +
                       "}\n2026-11-25T04:00:00.000000Z out hello\n";
  auto poll = parse_agent_poll(answer);
  ASSERT_TRUE(poll.is_ok()) << poll.status().message();
  EXPECT_EQ(poll->state, AgentPoll::State::kFinished);
  EXPECT_EQ(poll->log_size, 120);
  EXPECT_EQ(poll->log, "2026-11-25T04:00:00.000000Z out hello\n");
  ASSERT_TRUE(poll->result.has_value());
  EXPECT_EQ(poll->result->exit_code, 3);
  EXPECT_EQ(poll->result->missing, std::vector<std::string>{"./missing"});
  auto running = parse_agent_poll("{\"state\":\"running\",\"log_size\":0}\n");
  ASSERT_TRUE(running.is_ok());
  EXPECT_EQ(running->state, AgentPoll::State::kRunning);
  EXPECT_FALSE(running->result.has_value());
  EXPECT_FALSE(parse_agent_poll("bash: sdstack: command not found").is_ok());
}

}  // namespace
}  // namespace sdstack::flow
