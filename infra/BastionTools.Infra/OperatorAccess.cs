using System.Collections.Generic;
using System.Linq;
using Amazon.CDK;
using Amazon.CDK.AWS.IAM;
using Constructs;

namespace BastionTools.Infra
{
    /// <summary>
    /// What an operator needs for the BastionTools cmdlets, and nothing else: StartSession on this bastion with the
    /// port-forwarding documents (and the shell documents when enabled), Resume/TerminateSession on their own sessions,
    /// rds-db:connect as the listed database users, and the describe calls Get-BastionInstance and Get-BastionSession -History make. Optionally a
    /// role for listed principals and one for GitHub Actions through OIDC.
    /// </summary>
    public sealed class OperatorAccess : Construct
    {
        public const string GithubOidcHost = "token.actions.githubusercontent.com";

        public static readonly string[] PortForwardingDocuments = { "AWS-StartPortForwardingSession", "AWS-StartPortForwardingSessionToRemoteHost" };
        public const string NonInteractiveDocument = "AWS-StartNonInteractiveCommand";

        public OperatorAccess(Construct scope, string id, BastionSettings settings, Bastion bastion, Database database, SessionLogging logging) : base(scope, id)
        {
            var sessionResources = new List<string> { Arns.Regional("ec2", "instance/" + bastion.Instance.InstanceId) };
            sessionResources.AddRange(PortForwardingDocuments.Select(Arns.AwsDocument));
            if (settings.EnableShell)
            {
                sessionResources.Add(Arns.Regional("ssm", "document/" + SessionLogging.PreferencesDocumentName));
                sessionResources.Add(Arns.AwsDocument(NonInteractiveDocument));
            }

            var statements = new List<PolicyStatement>
            {
                new PolicyStatement(new PolicyStatementProps
                {
                    Sid = "StartSessionOnTheBastion",
                    Actions = new[] { "ssm:StartSession" },
                    Resources = sessionResources.ToArray(),
                    // Without a document name StartSession would fall back to the shell document: make IAM check it.
                    Conditions = new Dictionary<string, object>
                    {
                        ["BoolIfExists"] = new Dictionary<string, object> { ["ssm:SessionDocumentAccessCheck"] = "true" },
                    },
                }),
                new PolicyStatement(new PolicyStatementProps
                {
                    Sid = "OwnSessionsIamUsers",
                    Actions = new[] { "ssm:ResumeSession", "ssm:TerminateSession" },
                    Resources = new[] { Arns.Regional("ssm", "session/${aws:username}-*") },
                }),
                new PolicyStatement(new PolicyStatementProps
                {
                    Sid = "OwnSessionsAssumedRoles",
                    Actions = new[] { "ssm:ResumeSession", "ssm:TerminateSession" },
                    Resources = new[] { Arns.Regional("ssm", "session/*") },
                    Conditions = new Dictionary<string, object>
                    {
                        ["StringLike"] = new Dictionary<string, object> { ["ssm:resourceTag/aws:ssmmessages:session-id"] = "${aws:userid}" },
                    },
                }),
                new PolicyStatement(new PolicyStatementProps
                {
                    Sid = "ConnectAsListedDatabaseUsers",
                    Actions = new[] { "rds-db:connect" },
                    Resources = settings.DbUsers.Select(u => Arns.Regional("rds-db", $"dbuser:{database.Instance.AttrDbiResourceId}/{u}")).ToArray(),
                }),
                new PolicyStatement(new PolicyStatementProps
                {
                    // Get-RdsIamDatabase and -DbInstanceIdentifier/-DbClusterIdentifier (read-only); -DbHost needs neither.
                    Sid = "FindTheDatabase",
                    Actions = new[] { "rds:DescribeDBInstances", "rds:DescribeDBClusters" },
                    Resources = new[] { Arns.Regional("rds", "db:*"), Arns.Regional("rds", "cluster:*") },
                }),
                new PolicyStatement(new PolicyStatementProps
                {
                    Sid = "FindTheBastion",
                    // ssm:DescribeSessions: Get-BastionSession -History, the sessions' audit trail.
                    Actions = new[] { "ec2:DescribeInstances", "ssm:DescribeInstanceInformation", "ssm:DescribeSessions" },
                    Resources = new[] { "*" },
                }),
            };
            if (logging.SessionDataKey != null && settings.EnableShell)
            {
                // Shell and command sessions are KMS-encrypted: the client asks for each session's data key, with the
                // encryption context aws:ssm:TargetId = the instance, so only for sessions on this bastion. Only with
                // the shell: port-forwarding sessions are never encrypted this way, so without it nothing needs it
                // (the README's Permissions table has it on the shell and -Command rows only).
                statements.Add(new PolicyStatement(new PolicyStatementProps
                {
                    Sid = "EncryptSessionData",
                    Actions = new[] { "kms:GenerateDataKey" },
                    Resources = new[] { logging.SessionDataKey.KeyArn },
                    Conditions = new Dictionary<string, object>
                    {
                        ["StringEquals"] = new Dictionary<string, object>
                        {
                            ["kms:EncryptionContext:aws:ssm:TargetId"] = bastion.Instance.InstanceId,
                        },
                    },
                }));
            }

            Policy = new ManagedPolicy(this, "Policy", new ManagedPolicyProps
            {
                Description = "BastionTools operators: port forwarding through the bastion and IAM login to the database",
                Statements = statements.ToArray(),
            });
            NagAcknowledgements.Acknowledge(Policy, "AwsSolutions-IAM5",
                "ec2:DescribeInstances, ssm:DescribeInstanceInformation and ssm:DescribeSessions support no resource-level permissions; they are read-only and Get-BastionInstance and Get-BastionSession -History need them.",
                "Resource::*");
            NagAcknowledgements.Acknowledge(Policy, "AwsSolutions-IAM5",
                "rds:DescribeDBInstances and rds:DescribeDBClusters are read-only; Get-RdsIamDatabase lists the region's databases, so it needs every DB instance and cluster of the account and region.",
                "Resource::" + Arns.NagRegional("rds", "db:*"),
                "Resource::" + Arns.NagRegional("rds", "cluster:*"));
            NagAcknowledgements.Acknowledge(Policy, "AwsSolutions-IAM5",
                "Session ids are only known once started: the wildcard is bounded to the caller's own sessions by the ${aws:username}- prefix (IAM users) or the session-id tag condition on ${aws:userid} (roles).",
                // cdk-nag spells the policy variable ${aws:username} as <aws:username> in finding ids.
                "Resource::" + Arns.NagRegional("ssm", "session/<aws:username>-*"),
                "Resource::" + Arns.NagRegional("ssm", "session/*"));

            if (settings.AllowedOperatorPrincipals.Count > 0)
            {
                OperatorRole = new Role(this, "Role", new RoleProps
                {
                    Description = "BastionTools operators (assumed by the principals listed in allowedOperatorPrincipals)",
                    AssumedBy = new CompositePrincipal(settings.AllowedOperatorPrincipals.Select(p => (IPrincipal)new ArnPrincipal(p)).ToArray()),
                    ManagedPolicies = new IManagedPolicy[] { Policy },
                    MaxSessionDuration = Duration.Hours(4),
                });
            }

            if (settings.GithubRepo != null)
            {
                string providerArn;
                if (settings.GithubOidcProviderArn != null)
                {
                    providerArn = settings.GithubOidcProviderArn;
                }
                else
                {
                    var provider = new CfnOIDCProvider(this, "GithubOidcProvider", new CfnOIDCProviderProps
                    {
                        Url = "https://" + GithubOidcHost,
                        ClientIdList = new[] { "sts.amazonaws.com" },
                        // IAM no longer checks these for GitHub (its certificate chains to a trusted CA); the property is still accepted.
                        ThumbprintList = new[] { "6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd" },
                    });
                    providerArn = provider.AttrArn;
                }
                GithubRole = new Role(this, "GithubRole", new RoleProps
                {
                    Description = $"BastionTools operators: GitHub Actions of {settings.GithubRepo}",
                    AssumedBy = new FederatedPrincipal(providerArn, new Dictionary<string, object>
                    {
                        ["StringEquals"] = new Dictionary<string, object> { [GithubOidcHost + ":aud"] = "sts.amazonaws.com" },
                        ["StringLike"] = new Dictionary<string, object> { [GithubOidcHost + ":sub"] = $"repo:{settings.GithubRepo}:*" },
                    }, "sts:AssumeRoleWithWebIdentity"),
                    ManagedPolicies = new IManagedPolicy[] { Policy },
                    MaxSessionDuration = Duration.Hours(1),
                });
            }
        }

        public ManagedPolicy Policy { get; }
        public Role? OperatorRole { get; }
        public Role? GithubRole { get; }
    }
}
