#Requires -Version 7.0
# Issue 13 items 1-3: Get-RdsIamDatabase (RDS Query API on the sandbox: SigV4, pages, errors), the database named by
# -DbInstanceIdentifier / -DbClusterIdentifier (or piped) on New-RdsIamToken, Connect-IamPostgres, Grant-RdsIamUser and
# Revoke-RdsIamUser, and Aurora: the sandbox's RDS-IAM front is also the Aurora cluster demo-aurora (writer, reader and
# custom endpoints, authorized against its DbClusterResourceId), tested end to end with a real PostgreSQL.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox -ExtraArguments @('--rds')
    $script:Aws = $Sandbox.Aws
    $script:Pg = $Sandbox.postgres
    $script:Rds = $Sandbox.rds
    $script:Aurora = $Rds.aurora
    $script:Admin = [pscredential]::new($Pg.user, (ConvertTo-SecureString $Pg.password -AsPlainText -Force))
    $script:Tls = @{ Database = $Pg.database; SslRootCertificate = $Rds.caBundle }

    # A fresh access key with this IAM policy (the sandbox enforces it per key); returns the cmdlets' AWS parameters.
    $script:KeyCount = 0
    function New-Key($Policy) {
        $script:KeyCount++
        $key = 'AKIARDS{0:D13}' -f $KeyCount
        $secret = "rds/iam/secret/$KeyCount"
        $body = @{ secretAccessKey = $secret; userName = "rdsop$KeyCount"; policy = $Policy } | ConvertTo-Json -Depth 10
        $null = Invoke-RestMethod -Method Put -Uri "$($Sandbox.control)iam/credentials/$key" -Body $body -ContentType 'application/json'
        @{ AccessKey = $key; SecretKey = $secret; Region = $Sandbox.region; EndpointUrl = $Sandbox.ssm }
    }
    function Get-Failure([scriptblock] $Call) { try { $null = & $Call; $null } catch { $_ } }
    function Complete([string] $Line) { (TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches }
}

AfterAll {
    Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
    if ($Sandbox) { Stop-TestSandbox $Sandbox }
}

Describe 'Get-RdsIamDatabase' {
    It 'lists the Aurora cluster first, then the instances, with what IAM authentication needs' {
        $all = @(Get-RdsIamDatabase @Aws)
        $all[0].Kind | Should -Be 'Cluster'
        $all[0].PSObject.TypeNames[0] | Should -Be 'BastionTools.RdsIamDatabase'
        $cluster = $all | Where-Object Identifier -eq $Aurora.clusterIdentifier
        $cluster.Endpoint | Should -Be $Aurora.writerEndpoint
        $cluster.ReaderEndpoint | Should -Be $Aurora.readerEndpoint
        $cluster.CustomEndpoints | Should -Be @($Aurora.customEndpoints)
        $cluster.ResourceId | Should -Be $Aurora.clusterResourceId
        $cluster.AccountId | Should -Be $Sandbox.accountId
        $cluster.Region | Should -Be $Sandbox.region
        $instance = $all | Where-Object Identifier -eq 'demo'
        $instance.Endpoint | Should -Be $Rds.endpoint
        $instance.ResourceId | Should -Be $Rds.dbiResourceId
        ($all | Where-Object Identifier -eq $Aurora.memberInstance).ResourceId | Should -Be $Aurora.clusterResourceId
        ($all | Where-Object Identifier -eq 'legacy').IamAuthenticationEnabled | Should -BeFalse
    }

    It 'filters by wildcard and by -IamEnabled, and has a table view' {
        @(Get-RdsIamDatabase demo* @Aws).Identifier | Should -Be @('demo-aurora', 'demo', 'demo-aurora-1')
        @(Get-RdsIamDatabase -IamEnabled @Aws).Identifier | Should -Not -Contain 'legacy'
        $table = Get-RdsIamDatabase legacy @Aws | Out-String -Width 250
        $table | Should -Match 'Kind\s+Identifier\s+Engine\s+Iam\s+Endpoint\s+Port\s+ResourceId'
        $table | Should -Match 'Instance\s+legacy\s+postgres\s+False\s+legacy\.c0ffee123456\.us-west-2\.rds\.amazonaws\.com\s+5432\s+db-C0FFEESANDBOXLEGACY0000001'
    }

    It 'says RdsDatabaseNotFound for a name without wildcards that matches nothing' {
        $e = Get-Failure { Get-RdsIamDatabase nope @Aws -ErrorAction Stop }
        $e.FullyQualifiedErrorId | Should -BeLike 'RdsDatabaseNotFound,*'
        $e.CategoryInfo.Category | Should -Be 'ObjectNotFound'
    }

    It 'says RdsAccessDenied naming the action when rds:DescribeDBClusters is denied, and how to do without it' {
        $op = New-Key @{ Version = '2012-10-17'; Statement = @(@{ Effect = 'Allow'; Action = 'rds:DescribeDBInstances'; Resource = '*' }) }
        $e = Get-Failure { Get-RdsIamDatabase @op -ErrorAction Stop }
        $e.FullyQualifiedErrorId | Should -BeLike 'RdsAccessDenied,*'
        $e.CategoryInfo.Category | Should -Be 'PermissionDenied'
        "$e" | Should -Match 'rds:DescribeDBClusters'
        $e.ErrorDetails.RecommendedAction | Should -Match '-DbHost'
    }

    It 'completes identifiers, and -ClusterEndpoint with the cluster''s custom endpoints' {
        $saved = $env:AWS_ACCESS_KEY_ID, $env:AWS_SECRET_ACCESS_KEY, $env:AWS_REGION
        try {
            $env:AWS_ACCESS_KEY_ID = $Aws.AccessKey; $env:AWS_SECRET_ACCESS_KEY = $Aws.SecretKey; $env:AWS_REGION = $Aws.Region
            (Complete "Get-RdsIamDatabase -EndpointUrl $($Aws.EndpointUrl) -Name demo").CompletionText | Should -Be @('demo-aurora', 'demo', 'demo-aurora-1')
            (Complete "Connect-IamPostgres -EndpointUrl $($Aws.EndpointUrl) -DbClusterIdentifier d").CompletionText | Should -Be @('demo-aurora')
            (Complete "New-RdsIamToken -EndpointUrl $($Aws.EndpointUrl) -DbInstanceIdentifier l").CompletionText | Should -Be @('legacy')
            (Complete "New-RdsIamToken -EndpointUrl $($Aws.EndpointUrl) -DbClusterIdentifier demo-aurora -ClusterEndpoint ").CompletionText | Should -Be @('Writer', 'Reader', 'demo-aurora-reporting')
        }
        finally { $env:AWS_ACCESS_KEY_ID, $env:AWS_SECRET_ACCESS_KEY, $env:AWS_REGION = $saved }
    }
}

Describe 'New-RdsIamToken -DbInstanceIdentifier / -DbClusterIdentifier' {
    It 'signs for the endpoint looked up: instance, cluster writer, reader and custom endpoint' {
        (New-RdsIamToken -DbInstanceIdentifier demo -UserName u @Aws).Split('/')[0] | Should -Be "$($Rds.endpoint):5432"
        (New-RdsIamToken -DbClusterIdentifier demo-aurora -UserName u @Aws).Split('/')[0] | Should -Be "$($Aurora.writerEndpoint):5432"
        (New-RdsIamToken -DbClusterIdentifier demo-aurora -ClusterEndpoint Reader -UserName u @Aws).Split('/')[0] | Should -Be "$($Aurora.readerEndpoint):5432"
        (New-RdsIamToken -DbClusterIdentifier demo-aurora -ClusterEndpoint demo-aurora-reporting -UserName u @Aws).Split('/')[0] | Should -Be "$($Aurora.customEndpoints[0]):5432"
    }

    It 'takes databases from the pipeline (one token per database)' {
        $hosts = Get-RdsIamDatabase demo* @Aws | New-RdsIamToken -UserName u @Aws | ForEach-Object { $_.Split('/')[0] }
        $hosts | Should -Be @("$($Aurora.writerEndpoint):5432", "$($Rds.endpoint):5432", "$($Aurora.memberEndpoint):5432")
    }

    It 'refuses a database without IAM authentication, saying how to enable it' {
        $e = Get-Failure { New-RdsIamToken -DbInstanceIdentifier legacy -UserName u @Aws -ErrorAction Stop }
        $e.FullyQualifiedErrorId | Should -BeLike 'RdsIamAuthenticationDisabled,*'
        $e.ErrorDetails.RecommendedAction | Should -Match 'modify-db-instance --db-instance-identifier legacy --enable-iam-database-authentication'
    }

    It 'says RdsDatabaseNotFound, RdsEndpointNotFound and RdsDatabaseNotSpecified' {
        (Get-Failure { New-RdsIamToken -DbInstanceIdentifier nope -UserName u @Aws -ErrorAction Stop }).FullyQualifiedErrorId | Should -BeLike 'RdsDatabaseNotFound,*'
        (Get-Failure { New-RdsIamToken -DbClusterIdentifier demo-aurora -ClusterEndpoint analytics -UserName u @Aws -ErrorAction Stop }).FullyQualifiedErrorId | Should -BeLike 'RdsEndpointNotFound,*'
        (Get-Failure { New-RdsIamToken -UserName u @Aws -ErrorAction Stop }).FullyQualifiedErrorId | Should -BeLike 'RdsDatabaseNotSpecified,*'
    }
}

Describe 'Aurora end to end: grant, then connect through each cluster endpoint with exactly the granted policy' {
    BeforeAll {
        # The cluster piped from Get-RdsIamDatabase: endpoint, port, resource id and account all looked up.
        $script:Grant = Get-RdsIamDatabase demo-aurora @Aws | Grant-RdsIamUser -Name bastion -UserName app_aurora -Credential $Admin @Tls @Aws
        # An operator whose only permissions are the bastion tunnel and the policy Grant-RdsIamUser returned.
        $tunnel = @{
            Effect = 'Allow'; Action = @('ssm:StartSession', 'ssm:TerminateSession', 'ssm:ResumeSession', 'ec2:DescribeInstances', 'ssm:DescribeInstanceInformation', 'rds:DescribeDBClusters', 'rds:DescribeDBInstances'); Resource = '*'
        }
        $granted = $Grant.PolicyJson | ConvertFrom-Json -AsHashtable
        $script:Op = New-Key @{ Version = '2012-10-17'; Statement = @($tunnel) + @($granted.Statement) }
    }

    It 'Grant-RdsIamUser returns the complete rds-db:connect policy for the cluster resource id' {
        $Grant.Endpoint | Should -Be $Aurora.writerEndpoint
        $Grant.ResourceArn | Should -Be "arn:aws:rds-db:$($Sandbox.region):$($Sandbox.accountId):dbuser:$($Aurora.clusterResourceId)/app_aurora"
        $Grant.PolicyJson | Should -Match ([regex]::Escape($Grant.ResourceArn))
    }

    It 'connects as app_aurora through the <Endpoint> endpoint' -ForEach @(
        @{ Endpoint = 'Writer' }, @{ Endpoint = 'Reader' }, @{ Endpoint = 'demo-aurora-reporting' }
    ) {
        $c = Connect-IamPostgres -Name bastion -DbClusterIdentifier demo-aurora -ClusterEndpoint $Endpoint -UserName app_aurora @Tls @Op
        try {
            (Invoke-IamPostgresQuery -Connection $c -Query 'SELECT current_user AS u').u | Should -Be 'app_aurora'
            $expected = switch ($Endpoint) { 'Writer' { $Aurora.writerEndpoint } 'Reader' { $Aurora.readerEndpoint } default { $Aurora.customEndpoints[0] } }
            "$c" | Should -Match ([regex]::Escape($expected))
        }
        finally { Disconnect-IamPostgres $c }
    }

    It 'connects through the member instance piped from Get-RdsIamDatabase (Aurora authorizes it against the cluster)' {
        $c = Get-RdsIamDatabase $Aurora.memberInstance @Aws | Connect-IamPostgres -Name bastion -UserName app_aurora @Tls @Op
        try { (Invoke-IamPostgresQuery -Connection $c -Query 'SELECT 1 AS one').one | Should -Be 1 }
        finally { Disconnect-IamPostgres $c }
    }

    It 'is refused at the plain instance, whose resource id the policy does not name' {
        $e = Get-Failure { Connect-IamPostgres -Name bastion -DbInstanceIdentifier demo -UserName app_aurora @Tls @Op -ErrorAction Stop }
        $e.FullyQualifiedErrorId | Should -BeLike 'DatabaseLoginFailed,*'
    }

    It 'refuses Connect-IamPostgres to a database without IAM authentication before opening a tunnel' {
        $before = @(Get-BastionSession).Count
        $e = Get-Failure { Connect-IamPostgres -Name bastion -DbInstanceIdentifier legacy -UserName app_aurora @Tls @Aws -ErrorAction Stop }
        $e.FullyQualifiedErrorId | Should -BeLike 'RdsIamAuthenticationDisabled,*'
        @(Get-BastionSession).Count | Should -Be $before
    }

    It 'Revoke-RdsIamUser -DbClusterIdentifier undoes it' {
        $r = Revoke-RdsIamUser -Name bastion -DbClusterIdentifier demo-aurora -UserName app_aurora -Drop -Credential $Admin -Confirm:$false @Tls @Aws
        $r.Changed | Should -BeTrue
        $r.Endpoint | Should -Be $Aurora.writerEndpoint
    }
}

Describe 'Start-BastionSession -DbInstanceIdentifier / -DbClusterIdentifier, or a piped database' {
    BeforeAll {
        $script:Bastion = 'i-0a1b2c3d4e5f60001'
        # A password login (the admin) through the tunnel with psql, TLS verified for the endpoint the tunnel forwards to.
        function Invoke-PsqlThrough($Session) {
            $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
            $conninfo = "host=$($Session.RemoteHost) hostaddr=127.0.0.1 port=$($Session.LocalPort) user=$($Pg.user) dbname=$($Pg.database) sslmode=verify-full sslrootcert=$($Rds.caBundle)"
            foreach ($a in '-X', '-q', '-A', '-t', '-w', '-c', 'select 40 + 2', $conninfo) { $psi.ArgumentList.Add($a) }
            $psi.Environment['PGPASSWORD'] = $Pg.password
            $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
            $p = [System.Diagnostics.Process]::Start($psi)
            $err = $p.StandardError.ReadToEndAsync(); $out = $p.StandardOutput.ReadToEnd(); $p.WaitForExit()
            if ($p.ExitCode) { throw "psql failed ($($p.ExitCode)): $($err.Result)" }
            $out.Trim()
        }
    }

    It 'has identifier parameter sets beside the existing ones, each with a mandatory identifier' {
        $cmd = Get-Command Start-BastionSession
        $cmd.DefaultParameterSet | Should -Be 'TargetShell'
        $sets = $cmd.ParameterSets.Name
        foreach ($s in 'TargetRemoteHost', 'NameRemoteHost', 'TagRemoteHost', 'TargetPort', 'NamePort', 'TagPort', 'TargetShell', 'NameShell', 'TagShell',
            'TargetDbInstance', 'NameDbInstance', 'TagDbInstance', 'TargetDbCluster', 'NameDbCluster', 'TagDbCluster') { $sets | Should -Contain $s }
        $set = $cmd.ParameterSets | Where-Object Name -eq 'NameDbInstance'
        ($set.Parameters | Where-Object Name -eq 'DbInstanceIdentifier').IsMandatory | Should -BeTrue
        ($set.Parameters | Where-Object Name -eq 'DbInstanceIdentifier').ValueFromPipelineByPropertyName | Should -BeTrue
        $set.Parameters.Name | Should -Not -Contain 'RemoteHost'
        $set = $cmd.ParameterSets | Where-Object Name -eq 'TagDbCluster'
        ($set.Parameters | Where-Object Name -eq 'DbClusterIdentifier').IsMandatory | Should -BeTrue
        $set.Parameters.Name | Should -Contain 'ClusterEndpoint'
        # -RemoteHost is typed, no longer bound from a piped database (which binds the identifiers and is looked up).
        ((($cmd.ParameterSets | Where-Object Name -eq 'TargetRemoteHost').Parameters | Where-Object Name -eq 'RemoteHost').ValueFromPipelineByPropertyName) | Should -BeFalse
        # The syntax shows the identifier forms.
        (Get-Command Start-BastionSession -Syntax) | Should -Match '-Name <string> -DbClusterIdentifier <string> \[-RemotePort <int>\] \[-ClusterEndpoint <string>\]'
    }

    It 'tunnels to <Case> and a psql password login goes through it, TLS verified for <Expected>' -ForEach @(
        @{ Case = '-DbInstanceIdentifier demo'; Params = @{ DbInstanceIdentifier = 'demo' }; Expected = 'endpoint' }
        @{ Case = '-DbClusterIdentifier demo-aurora'; Params = @{ DbClusterIdentifier = 'demo-aurora' }; Expected = 'writerEndpoint' }
        @{ Case = '-DbClusterIdentifier demo-aurora -ClusterEndpoint Reader'; Params = @{ DbClusterIdentifier = 'demo-aurora'; ClusterEndpoint = 'Reader' }; Expected = 'readerEndpoint' }
        @{ Case = '-DbClusterIdentifier demo-aurora -ClusterEndpoint demo-aurora-reporting'; Params = @{ DbClusterIdentifier = 'demo-aurora'; ClusterEndpoint = 'demo-aurora-reporting' }; Expected = 'custom' }
        @{ Case = '-DbInstanceIdentifier demo-aurora-1 (Aurora member)'; Params = @{ DbInstanceIdentifier = 'demo-aurora-1' }; Expected = 'memberEndpoint' }
    ) {
        $want = switch ($Expected) { 'endpoint' { $Rds.endpoint } 'custom' { $Aurora.customEndpoints[0] } default { $Aurora.$Expected } }
        $s = Start-BastionSession -Name bastion @Params @Aws -ErrorAction Stop -WarningVariable warned 6>$null
        try {
            $s.RemoteHost | Should -Be $want
            $s.RemotePort | Should -Be 5432
            $warned | Should -BeNullOrEmpty
            Invoke-PsqlThrough $s | Should -Be '42'
        }
        finally { $s | Stop-BastionSession }
    }

    It 'takes databases from the pipeline: an instance, a cluster (with -ClusterEndpoint), a member instance, one session each' {
        $all = @(Get-RdsIamDatabase demo* @Aws | Start-BastionSession -Target $Bastion @Aws -ErrorAction Stop 6>$null)
        try {
            $all.RemoteHost | Should -Be @($Aurora.writerEndpoint, $Rds.endpoint, $Aurora.memberEndpoint)
            Invoke-PsqlThrough $all[1] | Should -Be '42'
        }
        finally { $all | Stop-BastionSession }
        $r = Get-RdsIamDatabase demo-aurora @Aws | Start-BastionSession -Target $Bastion -ClusterEndpoint Reader @Aws -ErrorAction Stop 6>$null
        try {
            $r.RemoteHost | Should -Be $Aurora.readerEndpoint
            Invoke-PsqlThrough $r | Should -Be '42'
        }
        finally { $r | Stop-BastionSession }
        # An Aurora member instance piped with -ClusterEndpoint: the cluster is meant (the cluster parameter sets).
        $m = Get-RdsIamDatabase $Aurora.memberInstance @Aws | Start-BastionSession -Target $Bastion -ClusterEndpoint Reader @Aws -ErrorAction Stop 6>$null
        try { $m.RemoteHost | Should -Be $Aurora.readerEndpoint }
        finally { $m | Stop-BastionSession }
    }

    It 'a database without IAM authentication: a warning with the command that enables it, and the tunnel opens (<Form>)' -ForEach @(
        @{ Form = 'identifier' }, @{ Form = 'piped' }
    ) {
        $s = if ($Form -eq 'identifier') { Start-BastionSession -Target $Bastion -DbInstanceIdentifier legacy @Aws -ErrorAction Stop -WarningVariable warned 3>$null 6>$null }
        else { Get-RdsIamDatabase legacy @Aws | Start-BastionSession -Target $Bastion @Aws -ErrorAction Stop -WarningVariable warned 3>$null 6>$null }
        try {
            $s.State | Should -Be 'Connected'
            $s.RemoteHost | Should -Be (Get-RdsIamDatabase legacy @Aws).Endpoint
            @($warned).Count | Should -Be 1
            "$warned" | Should -Match 'IAM database authentication is off on the DB instance legacy'
            "$warned" | Should -Match 'password logins'
            # The same words as RdsIamAuthenticationDisabled's recommended action.
            $refused = Get-Failure { New-RdsIamToken -DbInstanceIdentifier legacy -UserName u @Aws -ErrorAction Stop }
            "$warned" | Should -BeLike "*$($refused.ErrorDetails.RecommendedAction)"
        }
        finally { $s | Stop-BastionSession }
    }

    It 'says RdsDatabaseNotFound and RdsEndpointNotFound, and starts nothing' {
        $before = @(Get-BastionSession).Count
        (Get-Failure { Start-BastionSession -Target $Bastion -DbInstanceIdentifier nope @Aws -ErrorAction Stop }).FullyQualifiedErrorId | Should -BeLike 'RdsDatabaseNotFound,*'
        (Get-Failure { Start-BastionSession -Target $Bastion -DbClusterIdentifier demo-aurora -ClusterEndpoint analytics @Aws -ErrorAction Stop }).FullyQualifiedErrorId | Should -BeLike 'RdsEndpointNotFound,*'
        @(Get-BastionSession).Count | Should -Be $before
    }

    It 'completes the identifiers and -ClusterEndpoint' {
        $saved = $env:AWS_ACCESS_KEY_ID, $env:AWS_SECRET_ACCESS_KEY, $env:AWS_REGION
        try {
            $env:AWS_ACCESS_KEY_ID = $Aws.AccessKey; $env:AWS_SECRET_ACCESS_KEY = $Aws.SecretKey; $env:AWS_REGION = $Aws.Region
            (Complete "Start-BastionSession -Name bastion -EndpointUrl $($Aws.EndpointUrl) -DbInstanceIdentifier l").CompletionText | Should -Be @('legacy')
            (Complete "Start-BastionSession -Name bastion -EndpointUrl $($Aws.EndpointUrl) -DbClusterIdentifier d").CompletionText | Should -Be @('demo-aurora')
            (Complete "Start-BastionSession -Name bastion -EndpointUrl $($Aws.EndpointUrl) -DbClusterIdentifier demo-aurora -ClusterEndpoint ").CompletionText | Should -Be @('Writer', 'Reader', 'demo-aurora-reporting')
        }
        finally { $env:AWS_ACCESS_KEY_ID, $env:AWS_SECRET_ACCESS_KEY, $env:AWS_REGION = $saved }
    }
}

Describe 'Grant-RdsIamUser -DbHost completes the policy from sts:GetCallerIdentity' {
    It 'asks STS for the account when -DbiResourceId is given without -AccountId, even with an explicit deny on it' {
        $op = New-Key @{ Version = '2012-10-17'; Statement = @(
                @{ Effect = 'Allow'; Action = @('ssm:StartSession', 'ssm:TerminateSession', 'ssm:ResumeSession', 'ec2:DescribeInstances', 'ssm:DescribeInstanceInformation'); Resource = '*' }
                @{ Effect = 'Deny'; Action = 'sts:GetCallerIdentity'; Resource = '*' }) }
        $g = Grant-RdsIamUser -Name bastion -DbHost $Rds.endpoint -UserName app_sts -DbiResourceId $Rds.dbiResourceId -Credential $Admin @Tls @op
        $g.ResourceArn | Should -Be "arn:aws:rds-db:$($Sandbox.region):$($Sandbox.accountId):dbuser:$($Rds.dbiResourceId)/app_sts"
    }
}
