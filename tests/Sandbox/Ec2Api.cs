using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text;
using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace BastionTools.Sandbox
{
    /// <summary>The EC2 Query API of the sandbox: DescribeInstances (POST form, Version 2016-11-15), XML responses.</summary>
    internal sealed class Ec2Api
    {
        public const string ApiVersion = "2016-11-15";
        public static readonly XNamespace Ns = "http://ec2.amazonaws.com/doc/" + ApiVersion + "/";
        private static readonly Regex InstanceIdPattern = new("^i-([0-9a-f]{8}|[0-9a-f]{17})$", RegexOptions.CultureInvariant);

        private readonly SandboxHost _host;

        public Ec2Api(SandboxHost host) => _host = host;

        private SandboxWorld World => _host.World;

        /// <summary>Runs the action in <paramref name="form"/>; returns the XML body or throws <see cref="SandboxError"/>.</summary>
        public string Handle(IReadOnlyList<KeyValuePair<string, string>> form, string requestId, SandboxCredential caller)
        {
            var action = Get(form, "Action");
            switch (action)
            {
                case "DescribeInstances":
                    // No resource-level permissions for DescribeInstances: IAM evaluates it against "*".
                    SandboxIamPolicy.Authorize(World, caller, "ec2:DescribeInstances", "*").ThrowIfDeniedEc2(World.Ec2DenialMessage);
                    return DescribeInstances(form, requestId);
                case null: throw SandboxError.Ec2(400, "MissingAction", "The request must contain the parameter Action");
                default: throw SandboxError.Ec2(400, "InvalidAction", "The action " + action + " is not valid for this web service.");
            }
        }

        private string DescribeInstances(IReadOnlyList<KeyValuePair<string, string>> form, string requestId)
        {
            var ids = Indexed(form, "InstanceId.").Select(p => p.Value).ToList();
            var filters = ParseFilters(form);
            int? maxResults = null;
            var maxText = Get(form, "MaxResults");
            if (maxText != null)
            {
                if (!int.TryParse(maxText, NumberStyles.Integer, CultureInfo.InvariantCulture, out var m) || m < 5 || m > 1000)
                {
                    throw SandboxError.Ec2(400, "InvalidParameterValue", "Value ( " + maxText + " ) for parameter maxResults is invalid. Expecting a value greater than 5.");
                }
                if (ids.Count > 0) throw SandboxError.Ec2(400, "InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults");
                maxResults = m;
            }

            var all = World.Instances;
            var candidates = all.ToList();
            if (ids.Count > 0)
            {
                var malformed = ids.FirstOrDefault(id => !InstanceIdPattern.IsMatch(id) && all.All(i => i.InstanceId != id));
                if (malformed != null) throw SandboxError.Ec2(400, "InvalidInstanceID.Malformed", "Invalid id: \"" + malformed + "\"");
                var missing = ids.Where(id => all.All(i => i.InstanceId != id)).Distinct().ToList();
                if (missing.Count == 1) throw SandboxError.Ec2(400, "InvalidInstanceID.NotFound", "The instance ID '" + missing[0] + "' does not exist");
                if (missing.Count > 1) throw SandboxError.Ec2(400, "InvalidInstanceID.NotFound", "The instance IDs '" + string.Join(", ", missing) + "' do not exist");
                candidates = all.Where(i => ids.Contains(i.InstanceId, StringComparer.Ordinal)).ToList();
            }
            var matches = candidates.Where(i => filters.All(f => f(i))).ToList();

            var start = DecodeNextToken(Get(form, "NextToken"), matches.Count);
            var page = maxResults.HasValue ? matches.Skip(start).Take(maxResults.Value).ToList() : matches.Skip(start).ToList();
            var next = start + page.Count < matches.Count ? EncodeNextToken(start + page.Count) : null;

            var reservations = new XElement(Ns + "reservationSet", page.Select(Reservation));
            var root = new XElement(Ns + "DescribeInstancesResponse",
                new XElement(Ns + "requestId", requestId),
                reservations);
            if (next != null) root.Add(new XElement(Ns + "nextToken", next));
            return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + root.ToString(SaveOptions.DisableFormatting);
        }

        private XElement Reservation(SandboxInstance i)
        {
            var zone = string.IsNullOrEmpty(i.AvailabilityZone) ? World.Region + "a" : i.AvailabilityZone;
            var suffix = i.InstanceId.StartsWith("i-", StringComparison.Ordinal) ? i.InstanceId.Substring(2) : i.InstanceId;
            var item = new XElement(Ns + "item",
                new XElement(Ns + "instanceId", i.InstanceId),
                new XElement(Ns + "imageId", i.ImageId),
                new XElement(Ns + "instanceState", new XElement(Ns + "code", StateCode(i.State)), new XElement(Ns + "name", i.State)),
                new XElement(Ns + "privateDnsName", i.PrivateDnsName(World.Region)),
                new XElement(Ns + "dnsName"),
                new XElement(Ns + "instanceType", i.InstanceType),
                new XElement(Ns + "launchTime", i.LaunchTime.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture)),
                new XElement(Ns + "placement", new XElement(Ns + "availabilityZone", zone), new XElement(Ns + "tenancy", "default")),
                new XElement(Ns + "subnetId", i.SubnetId),
                new XElement(Ns + "vpcId", i.VpcId),
                new XElement(Ns + "privateIpAddress", i.PrivateIpAddress),
                new XElement(Ns + "architecture", "x86_64"),
                new XElement(Ns + "rootDeviceType", "ebs"),
                new XElement(Ns + "platformDetails", i.PlatformDetails),
                new XElement(Ns + "tagSet", i.AllTags().Select(t => new XElement(Ns + "item", new XElement(Ns + "key", t.Key), new XElement(Ns + "value", t.Value)))));
            return new XElement(Ns + "item",
                new XElement(Ns + "reservationId", "r-" + suffix),
                new XElement(Ns + "ownerId", World.AccountId),
                new XElement(Ns + "groupSet"),
                new XElement(Ns + "instancesSet", item));
        }

        private static int StateCode(string state) => state switch
        {
            "pending" => 0,
            "running" => 16,
            "shutting-down" => 32,
            "terminated" => 48,
            "stopping" => 64,
            "stopped" => 80,
            _ => 16,
        };

        private List<Func<SandboxInstance, bool>> ParseFilters(IReadOnlyList<KeyValuePair<string, string>> form)
        {
            var result = new List<Func<SandboxInstance, bool>>();
            var numbers = Indexed(form, "Filter.")
                .Select(p => p.Key.Split('.')[1])
                .Distinct()
                .ToList();
            foreach (var n in numbers)
            {
                var name = Get(form, "Filter." + n + ".Name");
                if (string.IsNullOrEmpty(name)) throw SandboxError.Ec2(400, "InvalidParameterValue", "The filter 'null' is invalid");
                var values = Indexed(form, "Filter." + n + ".Value.").Select(p => p.Value).ToList();
                var patterns = values.Select(Glob).ToList();
                bool Any(string? s) => s != null && patterns.Any(p => p.IsMatch(s));
                Func<SandboxInstance, bool> f = name switch
                {
                    "instance-id" => i => Any(i.InstanceId),
                    "instance-state-name" => i => Any(i.State),
                    "instance-state-code" => i => Any(StateCode(i.State).ToString(CultureInfo.InvariantCulture)),
                    "private-ip-address" => i => Any(i.PrivateIpAddress),
                    "platform-details" => i => Any(i.PlatformDetails),
                    "instance-type" => i => Any(i.InstanceType),
                    "vpc-id" => i => Any(i.VpcId),
                    "subnet-id" => i => Any(i.SubnetId),
                    "image-id" => i => Any(i.ImageId),
                    "tag-key" => i => i.AllTags().Any(t => Any(t.Key)),
                    "tag-value" => i => i.AllTags().Any(t => Any(t.Value)),
                    _ when name!.StartsWith("tag:", StringComparison.Ordinal) && name.Length > 4 =>
                        i => i.AllTags().Any(t => t.Key == name.Substring(4) && Any(t.Value)),
                    _ => throw SandboxError.Ec2(400, "InvalidParameterValue", "The filter '" + name + "' is invalid"),
                };
                result.Add(f);
            }
            return result;
        }

        /// <summary>EC2 filter values allow * (any run) and ? (one character).</summary>
        private static Regex Glob(string value)
        {
            var sb = new StringBuilder("^");
            foreach (var c in value)
            {
                sb.Append(c switch
                {
                    '*' => ".*",
                    '?' => ".",
                    _ => Regex.Escape(c.ToString()),
                });
            }
            sb.Append('$');
            return new Regex(sb.ToString(), RegexOptions.CultureInvariant | RegexOptions.Singleline);
        }

        private static string? Get(IReadOnlyList<KeyValuePair<string, string>> form, string name) =>
            form.Where(p => p.Key == name).Select(p => p.Value).FirstOrDefault();

        /// <summary>Parameters Prefix.N (in N order), for lists such as InstanceId.1, Filter.1.Value.2.</summary>
        private static List<KeyValuePair<string, string>> Indexed(IReadOnlyList<KeyValuePair<string, string>> form, string prefix) =>
            form.Where(p => p.Key.StartsWith(prefix, StringComparison.Ordinal) && p.Key.Length > prefix.Length && char.IsDigit(p.Key[prefix.Length]))
                .OrderBy(p => int.TryParse(new string(p.Key.Substring(prefix.Length).TakeWhile(char.IsDigit).ToArray()), NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : int.MaxValue)
                .ToList();

        private static string EncodeNextToken(int offset) =>
            Convert.ToBase64String(Encoding.UTF8.GetBytes("sandbox-ec2:" + offset.ToString(CultureInfo.InvariantCulture)));

        private static int DecodeNextToken(string? token, int count)
        {
            if (string.IsNullOrEmpty(token)) return 0;
            try
            {
                var text = Encoding.UTF8.GetString(Convert.FromBase64String(token));
                if (text.StartsWith("sandbox-ec2:", StringComparison.Ordinal)
                    && int.TryParse(text.Substring(12), NumberStyles.None, CultureInfo.InvariantCulture, out var offset)
                    && offset <= count)
                {
                    return offset;
                }
            }
            catch (FormatException)
            {
            }
            throw SandboxError.Ec2(400, "InvalidParameterValue", "Invalid value '" + token + "' for nextToken");
        }

        /// <summary>The EC2 error document.</summary>
        public static string ErrorXml(SandboxError error, string requestId) =>
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" +
            new XElement("Response",
                new XElement("Errors", new XElement("Error", new XElement("Code", error.Code), new XElement("Message", error.ErrorMessage ?? ""))),
                new XElement("RequestID", requestId)).ToString(SaveOptions.DisableFormatting);
    }
}
