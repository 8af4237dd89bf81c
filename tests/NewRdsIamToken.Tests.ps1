#Requires -Version 7.0
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    $script:ModulePath = Get-TestModulePath
    Import-Module $ModulePath -Force

    $script:Endpoint = 'demo.c0ffee123456.us-west-2.rds.amazonaws.com'
    $script:Keys = @{ AccessKey = 'AKIAIOSFODNN7EXAMPLE'; SecretKey = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }

    function ConvertFrom-Token([string] $Token) {
        $hostPort, $query = $Token -split '/\?', 2
        $map = [ordered]@{}
        foreach ($pair in $query -split '&') {
            $k, $v = $pair -split '=', 2
            $map[$k] = [uri]::UnescapeDataString($v)
        }
        [pscustomobject]@{ HostPort = $hostPort; Query = $map; Keys = @($map.Keys) }
    }

    # A clean child environment: no AWS variables, an empty HOME, metadata disabled.
    $script:CleanHome = Join-Path ([IO.Path]::GetTempPath()) ("bt-home-" + [guid]::NewGuid().ToString('n'))
    New-Item -ItemType Directory -Path $CleanHome | Out-Null
    $script:AwsVars = [Environment]::GetEnvironmentVariables().Keys | Where-Object { $_ -like 'AWS_*' }
}

AfterAll {
    Remove-Item $CleanHome -Recurse -Force -ErrorAction SilentlyContinue
}

Describe 'New-RdsIamToken parameters' {
    BeforeAll { $script:Cmd = Get-Command New-RdsIamToken }

    It 'has one parameter set with UserName mandatory, Hostname or an identifier (checked when it runs), Port optional' {
        $Cmd.ParameterSets.Count | Should -Be 1
        # -Hostname, -DbInstanceIdentifier or -DbClusterIdentifier (issue 13): none of them is mandatory on its own.
        $Cmd.Parameters['Hostname'].Attributes.Where({ $_ -is [Parameter] }).Mandatory | Should -BeFalse
        { New-RdsIamToken -UserName u @Keys -ErrorAction Stop } | Should -Throw -ErrorId 'RdsDatabaseNotSpecified,BastionTools.Commands.NewRdsIamTokenCommand'
        $Cmd.Parameters['UserName'].Attributes.Where({ $_ -is [Parameter] }).Mandatory | Should -BeTrue
        $Cmd.Parameters['Port'].Attributes.Where({ $_ -is [Parameter] }).Mandatory | Should -BeFalse
    }

    It 'binds Hostname, Port and UserName from the pipeline by property name' {
        foreach ($name in 'Hostname', 'Port', 'UserName') {
            $Cmd.Parameters[$name].Attributes.Where({ $_ -is [Parameter] }).ValueFromPipelineByPropertyName | Should -BeTrue -Because $name
        }
    }

    It 'has the AWS.Tools credential parameters with their aliases' {
        foreach ($name in 'AccessKey', 'SecretKey', 'SessionToken', 'ProfileName', 'ProfileLocation', 'Region') {
            $Cmd.Parameters.Keys | Should -Contain $name
        }
        $Cmd.Parameters['ProfileName'].Aliases | Should -Contain 'StoredCredentials'
        $Cmd.Parameters['SecretKey'].Aliases | Should -Contain 'SK'
    }

    It 'refuses a port out of range before doing anything' {
        { New-RdsIamToken -Hostname $Endpoint -UserName u -Port 70000 @Keys -ErrorAction Stop } | Should -Throw -ErrorId 'ParameterArgumentValidationError,BastionTools.Commands.NewRdsIamTokenCommand'
    }

    It 'declares string output' {
        $Cmd.OutputType.Type | Should -Be ([string])
    }
}

Describe 'New-RdsIamToken output' {
    It 'prints what aws rds generate-db-auth-token prints: host:port, Action, DBUser, then the X-Amz parameters' {
        $token = New-RdsIamToken -Hostname $Endpoint -UserName app_user @Keys
        $token | Should -BeOfType [string]
        $t = ConvertFrom-Token $token
        $t.HostPort | Should -Be "${Endpoint}:5432"
        $t.Keys | Should -Be @('Action', 'DBUser', 'X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature')
        $t.Query.Action | Should -Be 'connect'
        $t.Query.DBUser | Should -Be 'app_user'
        $t.Query['X-Amz-Expires'] | Should -Be '900'
        $t.Query['X-Amz-Credential'] | Should -Match '^AKIAIOSFODNN7EXAMPLE/\d{8}/us-west-2/rds-db/aws4_request$'
        $signedAt = [datetime]::ParseExact($t.Query['X-Amz-Date'], "yyyyMMdd'T'HHmmss'Z'", [cultureinfo]::InvariantCulture, 'AssumeUniversal,AdjustToUniversal')
        ([datetime]::UtcNow - $signedAt).TotalSeconds | Should -BeLessThan 120
        $token | Should -Not -Match '^https?://'
    }

    It 'carries X-Amz-Security-Token for temporary credentials' {
        $t = ConvertFrom-Token (New-RdsIamToken -Hostname $Endpoint -UserName u -AccessKey ASIAEXAMPLE0000001 -SecretKey s3cr3tValue -SessionToken 'tok/en+==')
        $t.Keys | Should -Contain 'X-Amz-Security-Token'
        $t.Query['X-Amz-Security-Token'] | Should -Be 'tok/en+=='
        $t.Keys[-1] | Should -Be 'X-Amz-Signature'
    }

    It 'infers the region from the China partition suffix' {
        $t = ConvertFrom-Token (New-RdsIamToken -Hostname 'db.abc.cn-north-1.rds.amazonaws.com.cn' -UserName u @Keys)
        $t.Query['X-Amz-Credential'] | Should -Match '/cn-north-1/rds-db/'
    }

    It 'uses -Region for a name that is not an RDS endpoint' {
        $t = ConvertFrom-Token (New-RdsIamToken -Hostname 'db.internal.example.com' -Port 6432 -UserName u -Region eu-west-3 @Keys)
        $t.HostPort | Should -Be 'db.internal.example.com:6432'
        $t.Query['X-Amz-Credential'] | Should -Match '/eu-west-3/rds-db/'
    }

    It 'encodes a user name as AWS does' {
        $token = New-RdsIamToken -Hostname $Endpoint -UserName 'jane doe+ops/é' @Keys
        $token | Should -BeLike '*&DBUser=jane%20doe%2Bops%2F%C3%A9&*'
    }

    It 'makes one token per pipeline object, bound by property name' {
        $targets = @(
            [pscustomobject]@{ Hostname = $Endpoint; Port = 5432; UserName = 'reader' }
            [pscustomobject]@{ Hostname = 'other.c0ffee123456.eu-west-1.rds.amazonaws.com'; Port = 6543; UserName = 'writer' }
        )
        $tokens = @($targets | New-RdsIamToken @Keys)
        $tokens.Count | Should -Be 2
        (ConvertFrom-Token $tokens[0]).HostPort | Should -Be "${Endpoint}:5432"
        (ConvertFrom-Token $tokens[0]).Query.DBUser | Should -Be 'reader'
        (ConvertFrom-Token $tokens[1]).HostPort | Should -Be 'other.c0ffee123456.eu-west-1.rds.amazonaws.com:6543'
        (ConvertFrom-Token $tokens[1]).Query['X-Amz-Credential'] | Should -Match '/eu-west-1/'
    }
}

Describe 'New-RdsIamToken errors' {
    It 'writes RdsRegionNotInferred for a non-RDS name without -Region, and goes on with the next item' {
        $targets = @(
            [pscustomobject]@{ Hostname = 'db.internal.example.com'; UserName = 'u' }
            [pscustomobject]@{ Hostname = $Endpoint; UserName = 'u' }
        )
        $out = @($targets | New-RdsIamToken @Keys -ErrorVariable errs -ErrorAction SilentlyContinue)
        $out.Count | Should -Be 1
        $errs.Count | Should -Be 1
        $errs[0].FullyQualifiedErrorId | Should -Be 'RdsRegionNotInferred,BastionTools.Commands.NewRdsIamTokenCommand'
        $errs[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
        $errs[0].ErrorDetails.RecommendedAction | Should -Match '-Region'
    }

    It 'writes RdsHostnameInvalid for a malformed host' {
        New-RdsIamToken -Hostname 'bad host!' -UserName u -Region us-east-1 @Keys -ErrorVariable errs -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'RdsHostnameInvalid,*'
    }

    It 'stops with AwsProfileNotFound for an unknown -ProfileName, even when other credentials exist' {
        $env:AWS_ACCESS_KEY_ID = 'AKIAENVIRONMENT00001'; $env:AWS_SECRET_ACCESS_KEY = 'env-secret'
        try {
            { New-RdsIamToken -Hostname $Endpoint -UserName u -ProfileName 'no-such-profile-7' -ErrorAction Stop } |
                Should -Throw -ErrorId 'AwsProfileNotFound,BastionTools.Commands.NewRdsIamTokenCommand'
        }
        finally { Remove-Item env:AWS_ACCESS_KEY_ID, env:AWS_SECRET_ACCESS_KEY }
    }

    It 'stops with AwsRegionInvalid for a misspelt -Region' {
        { New-RdsIamToken -Hostname $Endpoint -UserName u -Region 'us-west2' @Keys -ErrorAction Stop } | Should -Throw -ErrorId 'AwsRegionInvalid,*'
    }

    It 'stops with AwsCredentialsNotFound, saying what to set, when no credentials exist anywhere' {
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment @{ HOME = $CleanHome; AWS_EC2_METADATA_DISABLED = 'true' } -Script @"
Import-Module '$ModulePath'
try { New-RdsIamToken -Hostname $Endpoint -UserName u -ErrorAction Stop; 'NO-ERROR' }
catch { `$_.FullyQualifiedErrorId; `$_.CategoryInfo.Category; `$_.ErrorDetails.RecommendedAction }
"@
        $r.Output | Should -Match 'AwsCredentialsNotFound,BastionTools.Commands.NewRdsIamTokenCommand'
        $r.Output | Should -Match 'AuthenticationError'
        $r.Output | Should -Match 'AWS_PROFILE'
        $r.Output | Should -Not -Match 'NO-ERROR'
    }
}

Describe 'Credential sources seen from PowerShell' {
    BeforeAll {
        $script:ProfileDir = Join-Path $CleanHome '.aws'
        New-Item -ItemType Directory -Force -Path $ProfileDir | Out-Null
        Set-Content (Join-Path $ProfileDir 'credentials') -Value @(
            '[default]', 'aws_access_key_id = AKIADEFAULTPROFILE01', 'aws_secret_access_key = default-secret-value', '',
            '[ops]', 'aws_access_key_id = AKIAOPSPROFILE000001', 'aws_secret_access_key = ops-secret-value', 'aws_session_token = ops-session-token-value'
        )
        Set-Content (Join-Path $ProfileDir 'config') -Value @('[profile ops]', 'region = eu-central-1')
        $script:ChildEnv = @{ HOME = $CleanHome; AWS_EC2_METADATA_DISABLED = 'true' }
    }

    It 'uses the default profile of ~/.aws/credentials' {
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment $ChildEnv -Script "Import-Module '$ModulePath'; New-RdsIamToken $Endpoint -UserName u"
        $r.Output | Should -Match 'X-Amz-Credential=AKIADEFAULTPROFILE01%2F'
    }

    It 'uses AWS_PROFILE' {
        $envs = $ChildEnv.Clone(); $envs.AWS_PROFILE = 'ops'
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment $envs -Script "Import-Module '$ModulePath'; New-RdsIamToken $Endpoint -UserName u"
        $r.Output | Should -Match 'X-Amz-Credential=AKIAOPSPROFILE000001%2F'
        $r.Output | Should -Match 'X-Amz-Security-Token=ops-session-token-value'
    }

    It 'uses environment keys before the default profile' {
        $envs = $ChildEnv.Clone(); $envs.AWS_ACCESS_KEY_ID = 'AKIAENVIRONMENT00001'; $envs.AWS_SECRET_ACCESS_KEY = 'env-secret-value'
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment $envs -Script "Import-Module '$ModulePath'; New-RdsIamToken $Endpoint -UserName u"
        $r.Output | Should -Match 'X-Amz-Credential=AKIAENVIRONMENT00001%2F'
    }

    It 'uses $StoredAWSCredentials when it holds a profile name, before the environment' {
        $envs = $ChildEnv.Clone(); $envs.AWS_ACCESS_KEY_ID = 'AKIAENVIRONMENT00001'; $envs.AWS_SECRET_ACCESS_KEY = 'env-secret-value'
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment $envs -Script "Import-Module '$ModulePath'; `$global:StoredAWSCredentials = 'ops'; New-RdsIamToken $Endpoint -UserName u"
        $r.Output | Should -Match 'X-Amz-Credential=AKIAOPSPROFILE000001%2F'
    }

    It '-Debug alone never prompts, and narrates in the debug stream (non-interactive host)' {
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment $ChildEnv -Script @"
Import-Module '$ModulePath'
`$all = New-RdsIamToken $Endpoint -UserName u -Debug *>&1
'ERRORS=' + @(`$all | Where-Object { `$_ -is [System.Management.Automation.ErrorRecord] }).Count
'TOKENS=' + @(`$all | Where-Object { `$_ -is [string] }).Count
`$all | Where-Object { `$_ -is [System.Management.Automation.DebugRecord] } | ForEach-Object { 'DEBUG=' + `$_.Message }
"@
        $r.Output | Should -Match 'ERRORS=0'
        $r.Output | Should -Match 'TOKENS=1'
        $r.Output | Should -Match 'DEBUG=Signed an IAM token for user'
    }

    It '-Debug says where credentials and region came from and shows no secret, key or token' {
        $envs = $ChildEnv.Clone(); $envs.AWS_PROFILE = 'ops'
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment $envs -Script @"
Import-Module '$ModulePath'
`$all = New-RdsIamToken $Endpoint -UserName u -Debug -Verbose *>&1
`$token = `$all | Where-Object { `$_ -is [string] }
`$streams = `$all | Where-Object { `$_ -isnot [string] } | ForEach-Object { `$_.ToString() }
'STREAMS-BEGIN'; `$streams; 'STREAMS-END'
'TOKEN-SIG=' + ((`$token -split 'X-Amz-Signature=')[1])
"@
        $streams = ($r.Output -split 'STREAMS-BEGIN')[1] -split 'STREAMS-END' | Select-Object -First 1
        $streams | Should -Match "Credentials: from the profile 'ops' \(AWS_PROFILE\)"
        $streams | Should -Match 'Region: us-west-2, from the endpoint name'
        $signature = ([regex]::Match($r.Output, 'TOKEN-SIG=([0-9a-f]{64})')).Groups[1].Value
        $signature | Should -Not -BeNullOrEmpty
        foreach ($secret in 'ops-secret-value', 'ops-session-token-value', 'AKIAOPSPROFILE000001', $signature) {
            $streams | Should -Not -Match ([regex]::Escape($secret))
        }
    }
}
