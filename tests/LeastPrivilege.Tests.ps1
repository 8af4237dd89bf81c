#Requires -Version 7.0
# Least privilege (issue 10): every cmdlet runs against the sandbox with exactly the IAM policy the README's
# "Permissions" table documents for it (read from README.md here, so the table and the tests cannot drift apart), and
# with one needed action removed: a clear error that names the action, a stable ErrorId, category PermissionDenied.
# The sandbox enforces the policies per access key (tests/Sandbox/SandboxIamPolicy.cs; PUT /control/iam/...).
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox -ExtraArguments @('--rds')
    $script:Aws = $Sandbox.Aws
    $script:Pg = $Sandbox.postgres
    $script:Rds = $Sandbox.rds
    $script:Bastion = 'i-0a1b2c3d4e5f60001'
    $script:Db = @{ DbHost = $Rds.endpoint; DbPort = $Rds.port; Database = $Pg.database; SslRootCertificate = $Rds.caBundle }
    $script:Admin = [pscredential]::new($Pg.user, (ConvertTo-SecureString $Pg.password -AsPlainText -Force))

    function Invoke-AdminSql([string] $Sql) {
        $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
        foreach ($a in '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', "$($Pg.port)", '-U', $Pg.user, '-d', $Pg.database, '-c', $Sql) { $psi.ArgumentList.Add($a) }
        $psi.Environment['PGPASSWORD'] = $Pg.password
        $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
        $p = [System.Diagnostics.Process]::Start($psi); $out = $p.StandardOutput.ReadToEnd() + $p.StandardError.ReadToEnd(); $p.WaitForExit()
        if ($p.ExitCode) { throw "psql failed: $out" }
        $out.Trim()
    }

    # An IAM database user, and an IAM admin that may grant (for Grant-/Revoke-RdsIamUser -AdminUserName).
    Invoke-AdminSql @'
CREATE ROLE app_iam LOGIN; GRANT rds_iam TO app_iam; GRANT SELECT ON seed_items TO app_iam;
CREATE ROLE iam_admin LOGIN CREATEROLE; GRANT rds_iam TO iam_admin WITH ADMIN OPTION;
GRANT USAGE ON SCHEMA public TO iam_admin WITH GRANT OPTION; GRANT SELECT ON ALL TABLES IN SCHEMA public TO iam_admin WITH GRANT OPTION;
GRANT SELECT, USAGE ON ALL SEQUENCES IN SCHEMA public TO iam_admin WITH GRANT OPTION;
'@ | Out-Null

    # The README's table: command -> statements (actions on resources), placeholders kept.
    $readme = Get-Content (Join-Path $PSScriptRoot '..' 'README.md') -Raw
    $section = [regex]::Match($readme, '(?s)<!-- permissions-table -->(.*?)<!-- /permissions-table -->')
    if (-not $section.Success) { throw 'README.md has no permissions table.' }
    $script:Table = @{}
    foreach ($line in $section.Groups[1].Value -split "`n") {
        if ($line -notmatch '^\|\s*`([^`]+)`[^|]*\|([^|]*)\|') { continue }
        $command = $Matches[1]; $needs = $Matches[2].Trim()
        $statements = [System.Collections.Generic.List[object]]::new()
        if ($needs -ne 'nothing') {
            foreach ($group in $needs -split ';') {
                $parts = $group -split '\s+on\s+', 2
                $statements.Add([pscustomobject]@{
                        Actions   = @([regex]::Matches($parts[0], '`([^`]+)`') | ForEach-Object { $_.Groups[1].Value })
                        Resources = @([regex]::Matches($parts[1], '`([^`]+)`') | ForEach-Object { $_.Groups[1].Value })
                    })
            }
        }
        $Table[$command] = $statements
    }
    # Every line of the table but the header and its separator is a row: none may be skipped unread.
    $tableLines = @($section.Groups[1].Value -split "`n" | Where-Object { $_.TrimStart().StartsWith('|') }).Count
    if ($Table.Count -ne $tableLines - 2) { throw "Read $($Table.Count) of $($tableLines - 2) permission rows from README.md." }
    $script:Placeholders = [ordered]@{
        '<region>'          = $Sandbox.region
        '<account>'         = $Sandbox.accountId
        '<instance-id>'     = $Bastion
        '<dbi-resource-id>' = $Rds.dbiResourceId
        '<db-user>'         = 'app_iam'
        '<admin-user>'      = 'iam_admin'
        # The key whose policy lets IAM decide (the default key policy, as infra/'s session-data key has).
        '<key-id>'          = (Invoke-RestMethod "$($Sandbox.control)kms").keys.Where({ $_.aliases -contains 'alias/bastion-session-data-iam' }, 'First')[0].keyId
    }
    if (-not $Placeholders['<key-id>']) { throw 'The sandbox has no alias/bastion-session-data-iam key.' }

    # The IAM policy of the README rows, minus -Without actions or -WithoutResource resources.
    function New-ReadmePolicy([string[]] $Rows, [string[]] $Without = @(), [string[]] $WithoutResource = @()) {
        $statements = foreach ($row in $Rows) {
            if (-not $Table.ContainsKey($row)) { throw "The README permissions table has no row '$row'." }
            foreach ($s in $Table[$row]) {
                $actions = @($s.Actions | Where-Object { $_ -notin $Without })
                $resources = @($s.Resources | ForEach-Object {
                        $r = $_; foreach ($k in $Placeholders.Keys) { $r = $r.Replace($k, $Placeholders[$k]) }; $r
                    } | Where-Object { $r = $_; -not ($WithoutResource | Where-Object { $r -like "*$_" }) })
                if ($actions -and $resources) { @{ Effect = 'Allow'; Action = $actions; Resource = $resources } }
            }
        }
        @{ Version = '2012-10-17'; Statement = @($statements) }
    }

    $script:OperatorCount = 0
    # A fresh access key whose policy is exactly those rows; returns the cmdlets' AWS parameters for it.
    function New-Operator([string[]] $Rows, [string[]] $Without = @(), [string[]] $WithoutResource = @()) {
        $script:OperatorCount++
        $key = 'AKIALP{0:D14}' -f $OperatorCount
        $secret = "least/privilege/secret/$OperatorCount"
        $body = @{ secretAccessKey = $secret; userName = "op$OperatorCount"; policy = (New-ReadmePolicy $Rows $Without $WithoutResource) } | ConvertTo-Json -Depth 10
        $null = Invoke-RestMethod -Method Put -Uri "$($Sandbox.control)iam/credentials/$key" -Body $body -ContentType 'application/json'
        @{ AccessKey = $key; SecretKey = $secret; Region = $Sandbox.region; EndpointUrl = $Sandbox.ssm }
    }

    # Replaces the policy of an operator's key (the credentials a running session or connection keeps using).
    function Set-OperatorPolicy([hashtable] $Operator, [string[]] $Rows, [string[]] $Without = @()) {
        $body = New-ReadmePolicy $Rows $Without | ConvertTo-Json -Depth 10
        $null = Invoke-RestMethod -Method Put -Uri "$($Sandbox.control)iam/credentials/$($Operator.AccessKey)/policy" -Body $body -ContentType 'application/json'
    }

    function Get-SandboxSession([string] $Id) { Invoke-RestMethod "$($Sandbox.control)sessions/$Id" }

    # The error a call writes (its first), or $null.
    function Get-Failure([scriptblock] $Call) {
        try { $null = & $Call; $null } catch { $_ }
    }

    # The error a cmdlet must write for a denied action: AwsAccessDenied, PermissionDenied, naming the action.
    function Assert-Denied($Failure, [string] $Action, [string] $Cmdlet) {
        $Failure | Should -Not -BeNullOrEmpty -Because "$Action was removed"
        $Failure.FullyQualifiedErrorId | Should -BeLike "AwsAccessDenied,BastionTools.Commands.$Cmdlet"
        $Failure.CategoryInfo.Category | Should -Be 'PermissionDenied'
        "$Failure" | Should -Match ([regex]::Escape($Action))
    }

    function Wait-Until([scriptblock] $Condition, [int] $Seconds = 60, [string] $What = 'the condition') {
        $deadline = [DateTime]::UtcNow.AddSeconds($Seconds)
        while (-not (& $Condition)) {
            if ([DateTime]::UtcNow -gt $deadline) { throw "Timed out after $Seconds s waiting for $What." }
            Start-Sleep -Milliseconds 100
        }
    }

    # PostgreSQL's SSLRequest through a tunnel: 'S' (or 'N') proves bytes went through to a PostgreSQL front end.
    function Test-PostgresThrough([int] $Port) {
        $tcp = [System.Net.Sockets.TcpClient]::new('127.0.0.1', $Port)
        try {
            $stream = $tcp.GetStream(); $stream.ReadTimeout = 30000
            $stream.Write([byte[]](0, 0, 0, 8, 4, 210, 22, 47), 0, 8)
            [char] $stream.ReadByte()
        }
        finally { $tcp.Dispose() }
    }

    function Invoke-PsqlWithToken([int] $Port, [string] $Token) {
        $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
        $conninfo = "host=$($Rds.endpoint) hostaddr=127.0.0.1 port=$Port user=app_iam dbname=$($Pg.database) sslmode=verify-full sslrootcert=$($Rds.caBundle)"
        foreach ($a in '-X', '-q', '-A', '-t', '-w', '-c', 'select 40 + 2', $conninfo) { $psi.ArgumentList.Add($a) }
        $psi.Environment['PGPASSWORD'] = $Token
        $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
        $p = [System.Diagnostics.Process]::Start($psi); $out = $p.StandardOutput.ReadToEnd() + $p.StandardError.ReadToEnd(); $p.WaitForExit()
        [pscustomobject]@{ ExitCode = $p.ExitCode; Output = $out.Trim() }
    }
}

AfterAll {
    Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
    Stop-TestSandbox $Sandbox
}

Describe 'The README table' {
    It 'has a row for every exported cmdlet, and rows the tests below use' {
        foreach ($cmdlet in (Get-Command -Module BastionTools -CommandType Cmdlet).Name) {
            @($Table.Keys | Where-Object { $_ -eq $cmdlet -or $_ -like "$cmdlet *" }).Count | Should -BeGreaterThan 0 -Because "$cmdlet needs a row"
        }
        $Table['Get-BastionInstance'].Actions | Should -Be @('ec2:DescribeInstances', 'ssm:DescribeInstanceInformation')
        $Table['New-RdsIamToken'].Count | Should -Be 0
    }
}

Describe 'Get-BastionSession -History' {
    It 'lists the recorded sessions with exactly its row, and names ssm:DescribeSessions when it is missing' {
        $op = New-Operator 'Get-BastionSession -History'
        { Get-BastionSession -History @op -ErrorAction Stop } | Should -Not -Throw
        $op = New-Operator 'Get-BastionSession -History' -Without 'ssm:DescribeSessions'
        $failure = Get-Failure { Get-BastionSession -History @op -ErrorAction Stop }
        Assert-Denied $failure 'ssm:DescribeSessions' 'GetBastionSessionCommand'
    }
}

Describe 'Get-BastionInstance' {
    It 'lists the instances with exactly its row' {
        $op = New-Operator 'Get-BastionInstance'
        $found = @(Get-BastionInstance -All @op -ErrorAction Stop)
        $found.Count | Should -Be 3
        ($found | Where-Object InstanceId -eq $Bastion).PingStatus | Should -Be 'Online'
    }

    It 'names <Action> when it is missing' -ForEach @(
        @{ Action = 'ec2:DescribeInstances' }
        @{ Action = 'ssm:DescribeInstanceInformation' }
    ) {
        $op = New-Operator 'Get-BastionInstance' -Without $Action
        $failure = Get-Failure { Get-BastionInstance -All @op -ErrorAction Stop }
        Assert-Denied $failure $Action 'GetBastionInstanceCommand'
        $failure.ErrorDetails.RecommendedAction | Should -Match 'Permissions'
    }
}

Describe 'Start-BastionSession -Target needs only ssm:StartSession (and its own sessions)' {
    It 'opens a tunnel with exactly the -RemoteHost row; the look-ups it may not make are Verbose lines, not errors' {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost'
        $all = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @op -Verbose -ErrorVariable errs 4>&1 6>$null
        $s = $all | Where-Object { $_ -is [BastionTools.BastionSession] }
        $verbose = ($all | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }) -join "`n"
        try {
            $errs | Should -BeNullOrEmpty
            $s.State | Should -Be 'Connected'
            $s.SessionId | Should -BeLike "op$OperatorCount-*"
            $verbose | Should -Match 'AWS denied ec2:DescribeInstances, which -Target does not need'
            $verbose | Should -Match 'without checking its agent first'
            Test-PostgresThrough $s.LocalPort | Should -Be 'S'
        }
        finally { $s | Stop-BastionSession -ErrorAction Stop }
        (Get-SandboxSession $s.SessionId).state | Should -Be 'Terminated'
    }

    It 'opens a tunnel to a port of the bastion with exactly the -PortNumber row' {
        $op = New-Operator 'Start-BastionSession -Target -PortNumber'
        $s = Start-BastionSession -Target $Bastion -PortNumber $Pg.port @op -ErrorAction Stop 6>$null
        try {
            $s.State | Should -Be 'Connected'
            Test-PostgresThrough $s.LocalPort | Should -BeIn @('S', 'N')
        }
        finally { $s | Stop-BastionSession -ErrorAction Stop }
    }

    It 'runs a command with exactly the -Command row' {
        $op = New-Operator 'Start-BastionSession -Target -Command'
        @(Start-BastionSession -Target $Bastion -Command 'echo least privilege' @op -ErrorAction Stop) | Should -Be @('least privilege')
    }

    It 'starts nothing without ssm:StartSession (<Row>), and says so' -ForEach @(
        @{ Row = 'Start-BastionSession -Target -RemoteHost'; Extra = @{ RemoteHost = 'demo.c0ffee123456.us-west-2.rds.amazonaws.com' } }
        @{ Row = 'Start-BastionSession -Target -PortNumber'; Extra = @{ PortNumber = 5432 } }
        @{ Row = 'Start-BastionSession -Target -Command'; Extra = @{ Command = 'echo never' } }
    ) {
        $op = New-Operator $Row -Without 'ssm:StartSession'
        $before = @(Get-BastionSession).Count
        $failure = Get-Failure { Start-BastionSession -Target $Bastion @Extra @op -ErrorAction Stop 6>$null }
        Assert-Denied $failure 'ssm:StartSession' 'StartBastionSessionCommand'
        "$failure" | Should -Match "instance/$Bastion"
        @(Get-BastionSession).Count | Should -Be $before
    }

    It 'names the document when ssm:StartSession is allowed on the instance only' {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost' -WithoutResource 'document/AWS-StartPortForwardingSessionToRemoteHost'
        $failure = Get-Failure { Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint @op -ErrorAction Stop 6>$null }
        Assert-Denied $failure 'ssm:StartSession' 'StartBastionSessionCommand'
        "$failure" | Should -Match 'on resource: arn:aws:ssm:us-west-2::document/AWS-StartPortForwardingSessionToRemoteHost'
    }
}

Describe 'Shell and -Command sessions when the Session Manager preferences name a KMS key' {
    BeforeAll {
        # Session data encryption with the key whose policy lets IAM decide (KMS's and the CDK's default key policy):
        # the operator's identity policy is what allows kms:GenerateDataKey, as with infra/'s operator policy.
        function Set-SessionDataKey([string] $KeyId) {
            $null = Invoke-RestMethod -Method Put -Uri "$($Sandbox.control)preferences" -ContentType 'application/json' -Body (@{ kmsKeyId = $KeyId } | ConvertTo-Json)
        }
        Set-SessionDataKey 'alias/bastion-session-data-iam'
        $script:KeyArn = "arn:aws:kms:$($Sandbox.region):$($Sandbox.accountId):key/$($Placeholders['<key-id>'])"
        function Get-KmsCalls { @((Invoke-WebRequest "$($Sandbox.control)kms").Content | ConvertFrom-Json -NoEnumerate | ForEach-Object { $_.calls } | ForEach-Object { $_ }) }
    }
    AfterAll { Set-SessionDataKey $null }

    It 'the README rows carry kms:GenerateDataKey on the key for the shell and -Command, and no other row does' {
        foreach ($row in 'Start-BastionSession -Target -Command', 'Start-BastionSession -Target') {
            $kms = @($Table[$row] | Where-Object { $_.Actions -contains 'kms:GenerateDataKey' })
            $kms.Count | Should -Be 1 -Because $row
            $kms[0].Resources | Should -Be @('arn:aws:kms:<region>:<account>:key/<key-id>')
        }
        @($Table.Keys | Where-Object { $Table[$_].Actions -like 'kms:*' }).Count | Should -Be 2
    }

    It 'a -Command runs encrypted with exactly its row' {
        $op = New-Operator 'Start-BastionSession -Target -Command'
        $before = (Get-KmsCalls).Count
        $all = @(Start-BastionSession -Target $Bastion -Command 'echo encrypted $((20+22))' @op -Verbose -ErrorAction Stop 4>&1 6>$null)
        @($all | Where-Object { $_ -is [string] }) | Should -Be @('encrypted 42')
        ($all | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }).Message -join "`n" | Should -Match 'encrypted with AWS KMS \(alias/bastion-session-data-iam\)'
        $calls = @(Get-KmsCalls | Select-Object -Skip $before)
        $calls.operation | Should -Be @('GenerateDataKey', 'Decrypt')
        $calls[0].principal | Should -Be "arn:aws:iam::$($Sandbox.accountId):user/op$OperatorCount"
        $calls[0].keyArn | Should -Be $KeyArn
        $calls[0].errorCode | Should -BeNullOrEmpty
        $calls[0].encryptionContext.'aws:ssm:TargetId' | Should -Be $Bastion
        $calls[1].errorCode | Should -BeNullOrEmpty
    }

    It 'a -Command runs encrypted with the infra/ policy''s condition binding data keys to the bastion' {
        $op = New-Operator 'Start-BastionSession -Target -Command'
        $policy = New-ReadmePolicy 'Start-BastionSession -Target -Command'
        foreach ($st in $policy.Statement | Where-Object { $_.Action -contains 'kms:GenerateDataKey' }) {
            $st.Condition = @{ StringEquals = @{ 'kms:EncryptionContext:aws:ssm:TargetId' = $Bastion } }
        }
        $null = Invoke-RestMethod -Method Put -Uri "$($Sandbox.control)iam/credentials/$($op.AccessKey)/policy" -Body ($policy | ConvertTo-Json -Depth 10) -ContentType 'application/json'
        @(Start-BastionSession -Target $Bastion -Command 'echo bound' @op -ErrorAction Stop 6>$null) | Should -Be @('bound')

        # Bound to another instance: KMS refuses, as IAM's condition does not hold for this session.
        foreach ($st in $policy.Statement | Where-Object { $_.Action -contains 'kms:GenerateDataKey' }) {
            $st.Condition.StringEquals['kms:EncryptionContext:aws:ssm:TargetId'] = 'i-0a1b2c3d4e5f60002'
        }
        $null = Invoke-RestMethod -Method Put -Uri "$($Sandbox.control)iam/credentials/$($op.AccessKey)/policy" -Body ($policy | ConvertTo-Json -Depth 10) -ContentType 'application/json'
        $failure = Get-Failure { Start-BastionSession -Target $Bastion -Command 'echo never' @op -ErrorAction Stop 6>$null }
        $failure.FullyQualifiedErrorId | Should -BeLike 'SessionEncryptionDenied,*'
    }

    It 'without kms:GenerateDataKey: SessionEncryptionDenied (PermissionDenied) naming the action and the key, and nothing runs' {
        $op = New-Operator 'Start-BastionSession -Target -Command' -Without 'kms:GenerateDataKey'
        $failure = Get-Failure { Start-BastionSession -Target $Bastion -Command 'echo must-not-run-$((1+1))' @op -ErrorAction Stop 6>$null }
        $failure | Should -Not -BeNullOrEmpty
        $failure.FullyQualifiedErrorId | Should -Be 'SessionEncryptionDenied,BastionTools.Commands.StartBastionSessionCommand'
        $failure.CategoryInfo.Category | Should -Be 'PermissionDenied'
        "$failure" | Should -Match 'kms:GenerateDataKey'
        "$failure" | Should -Match 'alias/bastion-session-data-iam'
        "$failure" | Should -Match ([regex]::Escape("on resource: $KeyArn because no identity-based policy allows the kms:GenerateDataKey action"))
        $failure.ErrorDetails.RecommendedAction | Should -Match 'kms:GenerateDataKey'
        "$failure" | Should -Not -Match 'must-not-run-2'
        $denied = (Get-KmsCalls)[-1]
        $denied.operation | Should -Be 'GenerateDataKey'
        $denied.errorCode | Should -Be 'AccessDeniedException'
        $denied.principal | Should -Be "arn:aws:iam::$($Sandbox.accountId):user/op$OperatorCount"
    }

    It 'port forwarding is never encrypted: the -RemoteHost row has no kms action and still works' {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost'
        $s = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @op -ErrorAction Stop 6>$null
        try { Test-PostgresThrough $s.LocalPort | Should -Be 'S' }
        finally { $s | Stop-BastionSession -ErrorAction Stop }
    }
}

Describe '-Name and -Tag need the two describe actions' {
    It 'work with the -Name row added to the cmdlet''s' {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost', '-Name'
        $s = Start-BastionSession -Name bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @op -ErrorAction Stop 6>$null
        try { $s.Target | Should -Be $Bastion }
        finally { $s | Stop-BastionSession -ErrorAction Stop }
    }

    It 'fail without <Action>, naming both actions and -Target' -ForEach @(
        @{ Action = 'ec2:DescribeInstances'; By = @{ Name = 'bastion' } }
        @{ Action = 'ssm:DescribeInstanceInformation'; By = @{ Tag = @{ Role = 'bastion'; Name = 'bastion' } } }
    ) {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost', '-Name' -Without $Action
        $failure = Get-Failure { Start-BastionSession @By -RemoteHost $Rds.endpoint @op -ErrorAction Stop 6>$null }
        Assert-Denied $failure $Action 'StartBastionSessionCommand'
        "$failure" | Should -Match 'needs ec2:DescribeInstances and ssm:DescribeInstanceInformation'
        $failure.ErrorDetails.RecommendedAction | Should -Match '-Target <instance id>'
    }
}

Describe 'Stop-BastionSession and ResumeSession' {
    It 'stops a session when the key that started it has only the Stop-BastionSession row' {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost'
        $s = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @op -ErrorAction Stop 6>$null
        Set-OperatorPolicy $op 'Stop-BastionSession'
        $s | Stop-BastionSession -ErrorAction Stop
        (Get-SandboxSession $s.SessionId).state | Should -Be 'Terminated'
    }

    It 'ends the session without ssm:TerminateSession: the agent ends it on the TerminateSession flag, as with the official client' {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost' -Without 'ssm:TerminateSession'
        $s = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @op -ErrorAction Stop 6>$null
        $port = $s.LocalPort
        $s | Stop-BastionSession -ErrorAction Stop
        (Get-SandboxSession $s.SessionId).state | Should -Be 'Terminated'
        @(Get-BastionSession | Where-Object SessionId -eq $s.SessionId).Count | Should -Be 0
        Test-LoopbackPortRefused -Port $port | Should -BeTrue
    }

    Context 'an agent from before the TerminateSession flag (2.3.722.0 or older)' {
        BeforeAll {
            # A sandbox of its own whose only bastion runs agent 2.3.672.0 (basic port mode, no flag): only the
            # TerminateSession call can end its sessions. The destination is the other sandbox's PostgreSQL port.
            $script:MainSandbox = $Sandbox
            $script:MainInstance = $Placeholders['<instance-id>']
            $script:Ancient = 'i-0a1b2c3d4e5f60004'
            $script:Sandbox = Start-TestSandbox -World @{ instances = @(@{ instanceId = $Ancient; name = 'bastion-ancient'; agentVersion = '2.3.672.0' }) }
            $Placeholders['<instance-id>'] = $Ancient
        }
        AfterAll {
            $Placeholders['<instance-id>'] = $MainInstance
            $old = $Sandbox
            $script:Sandbox = $MainSandbox
            Stop-TestSandbox $old
        }

        It 'closes the tunnel without ssm:TerminateSession, and says the session stays until the idle timeout' {
            $op = New-Operator 'Start-BastionSession -Target -PortNumber' -Without 'ssm:TerminateSession'
            $s = Start-BastionSession -Target $Ancient -PortNumber $Pg.port @op -ErrorAction Stop 6>$null
            $s.Mode | Should -Be 'Basic'
            $port = $s.LocalPort
            $failure = Get-Failure { $s | Stop-BastionSession -ErrorAction Stop }
            Assert-Denied $failure 'ssm:TerminateSession' 'StopBastionSessionCommand'
            "$failure" | Should -Match 'idle timeout'
            (Get-SandboxSession $s.SessionId).state | Should -Not -Be 'Terminated'
            @(Get-BastionSession | Where-Object SessionId -eq $s.SessionId).Count | Should -Be 0
            Test-LoopbackPortRefused -Port $port | Should -BeTrue
        }
    }

    It 'resumes a lost connection with its row' {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost'
        $s = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @op -ErrorAction Stop 6>$null
        try {
            $null = Invoke-RestMethod -Method Post -Uri "$($Sandbox.control)sessions/$($s.SessionId)/kill"
            Wait-Until { $s.Reconnects -ge 1 -and $s.State -eq 'Connected' } -What 'the session to be resumed'
            Test-PostgresThrough $s.LocalPort | Should -Be 'S'
        }
        finally { $s | Stop-BastionSession -ErrorAction Stop }
    }

    It 'ends with AwsAccessDenied naming ssm:ResumeSession when it is missing' {
        $op = New-Operator 'Start-BastionSession -Target -RemoteHost' -Without 'ssm:ResumeSession'
        $s = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @op -ErrorAction Stop 6>$null
        $null = Invoke-RestMethod -Method Post -Uri "$($Sandbox.control)sessions/$($s.SessionId)/kill"
        Wait-Until { $s.State -eq 'Failed' } -What 'the session to end'
        $s.ClosedErrorId | Should -Be 'AwsAccessDenied'
        $s.ClosedReason | Should -Match 'AWS denied ssm:ResumeSession'
        $s | Stop-BastionSession -ErrorAction SilentlyContinue
    }
}

Describe 'New-RdsIamToken' {
    BeforeAll {
        # A tunnel for psql, opened by the sandbox's own (unrestricted) key.
        $script:Tunnel = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @Aws -ErrorAction Stop 6>$null
    }
    AfterAll { $Tunnel | Stop-BastionSession -ErrorAction SilentlyContinue }

    It 'signs with no permission at all (no AWS call); RDS accepts the token only from a key allowed rds-db:connect' {
        $none = New-Operator 'New-RdsIamToken'
        $token = New-RdsIamToken -Hostname $Rds.endpoint -Port $Rds.port -UserName app_iam -AccessKey $none.AccessKey -SecretKey $none.SecretKey -ErrorAction Stop
        $token | Should -Match '^demo\.c0ffee123456\.us-west-2\.rds\.amazonaws\.com:5432/\?Action=connect&DBUser=app_iam&'
        $refused = Invoke-PsqlWithToken $Tunnel.LocalPort $token
        $refused.ExitCode | Should -Not -Be 0
        $refused.Output | Should -Match 'PAM authentication failed for user "app_iam"'

        $allowed = New-Operator 'Connect-IamPostgres -Session'
        $token = New-RdsIamToken -Hostname $Rds.endpoint -Port $Rds.port -UserName app_iam -AccessKey $allowed.AccessKey -SecretKey $allowed.SecretKey -ErrorAction Stop
        $ok = Invoke-PsqlWithToken $Tunnel.LocalPort $token
        $ok.Output | Should -Be '42'
    }
}

Describe 'Connect-IamPostgres, Invoke-IamPostgresQuery, Disconnect-IamPostgres' {
    It 'connect with exactly the -Target row' {
        $op = New-Operator 'Connect-IamPostgres -Target'
        $c = Connect-IamPostgres -Target $Bastion -UserName app_iam @Db @op -ErrorAction Stop -WarningVariable warns 3>$null
        try { (Invoke-IamPostgresQuery -Connection $c -Query 'select count(*) as n from seed_items').n | Should -Be 3 }
        finally { $c | Disconnect-IamPostgres -WarningVariable warns 3>$null }
        $warns | Should -BeNullOrEmpty
        (Get-SandboxSession $c.SessionId).state | Should -Be 'Terminated'
    }

    It 'without ssm:StartSession: AwsAccessDenied' {
        $op = New-Operator 'Connect-IamPostgres -Target' -Without 'ssm:StartSession'
        Assert-Denied (Get-Failure { Connect-IamPostgres -Target $Bastion -UserName app_iam @Db @op -ErrorAction Stop }) 'ssm:StartSession' 'ConnectIamPostgresCommand'
    }

    It 'without rds-db:connect: RDS''s PAM failure, and the error names rds-db:connect (RDS gives no reason)' {
        $op = New-Operator 'Connect-IamPostgres -Target' -Without 'rds-db:connect'
        $before = @(Get-BastionSession).Count
        $failure = Get-Failure { Connect-IamPostgres -Target $Bastion -UserName app_iam @Db @op -ErrorAction Stop }
        $failure.FullyQualifiedErrorId | Should -BeLike 'DatabaseLoginFailed,*'
        "$failure" | Should -Match 'PAM authentication failed for user "app_iam"'
        "$failure" | Should -Match 'rds-db:connect on arn:aws:rds-db:us-west-2:<account>:dbuser:<DbiResourceId>/app_iam'
        @(Get-BastionSession).Count | Should -Be $before   # its tunnel was closed again
    }

    It 'connect through an open session with only the -Session row' {
        $s = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @Aws -ErrorAction Stop 6>$null
        try {
            $op = New-Operator 'Connect-IamPostgres -Session'
            $db = $Db.Clone(); $db.Remove('DbHost')
            $c = $s | Connect-IamPostgres -DbHost $Rds.endpoint -UserName app_iam @db @op -ErrorAction Stop
            (Invoke-IamPostgresQuery -Connection $c -Query 'select 6 * 7 as n').n | Should -Be 42
            $c | Disconnect-IamPostgres
            $s.State | Should -Be 'Connected'
        }
        finally { $s | Stop-BastionSession }
    }

    It 'Invoke-IamPostgresQuery opens new pooled connections with only its row, and names rds-db:connect without it' {
        $op = New-Operator 'Connect-IamPostgres -Target'
        $c = Connect-IamPostgres -Target $Bastion -UserName app_iam @Db @op -ErrorAction Stop
        try {
            Set-OperatorPolicy $op 'Invoke-IamPostgresQuery'
            # The outer query holds its connection while it streams rows, so the inner one opens a new physical
            # connection: a new token, signed by the key whose only permission is now rds-db:connect.
            $pids = Invoke-IamPostgresQuery -Connection $c -Query 'select pg_backend_pid() as pid from generate_series(1, 2)' |
                ForEach-Object { [pscustomobject]@{ Outer = $_.pid; Inner = (Invoke-IamPostgresQuery -Connection $c -Query 'select pg_backend_pid() as pid').pid } }
            @($pids).Count | Should -Be 2
            $pids[0].Inner | Should -Not -Be $pids[0].Outer

            Set-OperatorPolicy $op 'Invoke-IamPostgresQuery' -Without 'rds-db:connect'
            # Both pooled connections are idle now: hold two, so the third needs a new token.
            $failure = Get-Failure {
                Invoke-IamPostgresQuery -Connection $c -Query 'select 1 as a' | ForEach-Object {
                    Invoke-IamPostgresQuery -Connection $c -Query 'select 2 as b' | ForEach-Object {
                        Invoke-IamPostgresQuery -Connection $c -Query 'select 3 as c' -ErrorAction Stop
                    }
                }
            }
            $failure.FullyQualifiedErrorId | Should -BeLike 'DatabaseLoginFailed,*'
            "$failure" | Should -Match 'rds-db:connect'
        }
        finally {
            # Disconnect-IamPostgres with no ssm:TerminateSession left: the pool closes, the tunnel too, and the agent
            # ends the session on the TerminateSession flag (no call, no warning).
            $c | Disconnect-IamPostgres -WarningVariable warns 3>$null
        }
        $warns | Should -BeNullOrEmpty
        (Get-SandboxSession $c.SessionId).state | Should -Be 'Terminated'
    }

    It 'Disconnect-IamPostgres terminates the tunnel it owns with only its row' {
        $op = New-Operator 'Connect-IamPostgres -Target'
        $c = Connect-IamPostgres -Target $Bastion -UserName app_iam @Db @op -ErrorAction Stop
        Set-OperatorPolicy $op 'Disconnect-IamPostgres'
        $c | Disconnect-IamPostgres -WarningVariable warns 3>$null
        $warns | Should -BeNullOrEmpty
        (Get-SandboxSession $c.SessionId).state | Should -Be 'Terminated'
    }
}

Describe 'Grant-RdsIamUser and Revoke-RdsIamUser' {
    It 'grant and revoke with exactly their -Credential rows' {
        $grant = New-Operator 'Grant-RdsIamUser -Target -Credential'
        $g = Grant-RdsIamUser -Target $Bastion -UserName lp_reader -Access ReadOnly -Credential $Admin @Db @grant -ErrorAction Stop -WarningVariable warns 3>$null
        $g.Changed | Should -BeTrue
        $warns | Should -BeNullOrEmpty
        $revoke = New-Operator 'Revoke-RdsIamUser -Target -Credential'
        $r = Revoke-RdsIamUser -Target $Bastion -UserName lp_reader -Drop -Credential $Admin @Db @revoke -Confirm:$false -ErrorAction Stop
        $r.Changed | Should -BeTrue
        Invoke-AdminSql "select count(*) from pg_roles where rolname = 'lp_reader'" | Should -Be '0'
    }

    It 'grant and revoke with exactly their -AdminUserName rows (the admin logs in with IAM)' {
        $grant = New-Operator 'Grant-RdsIamUser -Target -AdminUserName'
        $g = Grant-RdsIamUser -Target $Bastion -UserName lp_iam_made -Access ReadOnly -AdminUserName iam_admin @Db @grant -ErrorAction Stop
        $g.Changed | Should -BeTrue
        $revoke = New-Operator 'Revoke-RdsIamUser -Target -AdminUserName'
        (Revoke-RdsIamUser -Target $Bastion -UserName lp_iam_made -Drop -AdminUserName iam_admin @Db @revoke -Confirm:$false -ErrorAction Stop).Changed | Should -BeTrue
    }

    It 'without ssm:StartSession: AwsAccessDenied, and nothing changes' {
        $op = New-Operator 'Grant-RdsIamUser -Target -Credential' -Without 'ssm:StartSession'
        Assert-Denied (Get-Failure { Grant-RdsIamUser -Target $Bastion -UserName lp_never -Credential $Admin @Db @op -ErrorAction Stop }) 'ssm:StartSession' 'GrantRdsIamUserCommand'
        Invoke-AdminSql "select count(*) from pg_roles where rolname = 'lp_never'" | Should -Be '0'
    }

    It 'without rds-db:connect for the IAM admin: DatabaseLoginFailed naming rds-db:connect' {
        $op = New-Operator 'Revoke-RdsIamUser -Target -AdminUserName' -Without 'rds-db:connect'
        $failure = Get-Failure { Revoke-RdsIamUser -Target $Bastion -UserName app_iam -AdminUserName iam_admin @Db @op -Confirm:$false -ErrorAction Stop }
        $failure.FullyQualifiedErrorId | Should -BeLike 'DatabaseLoginFailed,*'
        "$failure" | Should -Match 'dbuser:<DbiResourceId>/iam_admin'
        Invoke-AdminSql "select count(*) from pg_auth_members m join pg_roles r on r.oid = m.member where r.rolname = 'app_iam'" | Should -Be '1'
    }
}

Describe 'Get-RdsIamDatabase and the database identifiers (issue 13)' {
    It 'lists with exactly its row' {
        $op = New-Operator @('Get-RdsIamDatabase')
        @(Get-RdsIamDatabase @op).Identifier | Should -Contain 'demo'
    }

    It 'names <Action> when it is missing: RdsAccessDenied, PermissionDenied' -ForEach @(
        @{ Action = 'rds:DescribeDBInstances' }
        @{ Action = 'rds:DescribeDBClusters' }
    ) {
        $op = New-Operator @('Get-RdsIamDatabase') -Without $Action
        $failure = Get-Failure { Get-RdsIamDatabase @op -ErrorAction Stop }
        $failure.FullyQualifiedErrorId | Should -BeLike 'RdsAccessDenied,BastionTools.Commands.GetRdsIamDatabaseCommand'
        $failure.CategoryInfo.Category | Should -Be 'PermissionDenied'
        "$failure" | Should -Match ([regex]::Escape($Action))
    }

    It 'Connect-IamPostgres -DbInstanceIdentifier connects with its -Target row and the identifier row, and names rds:DescribeDBInstances without it' {
        $op = New-Operator @('Connect-IamPostgres -Target', '-DbInstanceIdentifier')
        $c = Connect-IamPostgres -Target $Bastion -DbInstanceIdentifier demo -UserName app_iam -Database $Pg.database -SslRootCertificate $Rds.caBundle @op
        try { (Invoke-IamPostgresQuery -Connection $c -Query 'SELECT current_user AS u').u | Should -Be 'app_iam' }
        finally { Disconnect-IamPostgres $c }

        $op = New-Operator @('Connect-IamPostgres -Target')
        $failure = Get-Failure { Connect-IamPostgres -Target $Bastion -DbInstanceIdentifier demo -UserName app_iam -Database $Pg.database -SslRootCertificate $Rds.caBundle @op -ErrorAction Stop }
        $failure.FullyQualifiedErrorId | Should -BeLike 'RdsAccessDenied,*'
        "$failure" | Should -Match 'rds:DescribeDBInstances'
        # -DbHost needs no rds:Describe* at all.
        $c = Connect-IamPostgres -Target $Bastion -UserName app_iam @Db @op
        Disconnect-IamPostgres $c
    }

    It 'Start-BastionSession -DbInstanceIdentifier opens a tunnel with exactly its row, and says RdsAccessDenied naming rds:DescribeDBInstances without it' {
        $op = New-Operator 'Start-BastionSession -Target -DbInstanceIdentifier'
        $s = Start-BastionSession -Target $Bastion -DbInstanceIdentifier demo @op -ErrorAction Stop 6>$null
        try {
            $s.State | Should -Be 'Connected'
            $s.RemoteHost | Should -Be $Rds.endpoint
            $s.SessionId | Should -BeLike "op$OperatorCount-*"
            Test-PostgresThrough $s.LocalPort | Should -Be 'S'
        }
        finally { $s | Stop-BastionSession -ErrorAction Stop }
        # An Aurora cluster through the same row (rds:DescribeDBClusters).
        $s = Start-BastionSession -Target $Bastion -DbClusterIdentifier demo-aurora @op -ErrorAction Stop 6>$null
        try { Test-PostgresThrough $s.LocalPort | Should -Be 'S' }
        finally { $s | Stop-BastionSession -ErrorAction Stop }

        $op = New-Operator 'Start-BastionSession -Target -DbInstanceIdentifier' -Without 'rds:DescribeDBInstances'
        $before = @(Get-BastionSession).Count
        $failure = Get-Failure { Start-BastionSession -Target $Bastion -DbInstanceIdentifier demo @op -ErrorAction Stop 6>$null }
        $failure.FullyQualifiedErrorId | Should -BeLike 'RdsAccessDenied,BastionTools.Commands.StartBastionSessionCommand'
        $failure.CategoryInfo.Category | Should -Be 'PermissionDenied'
        "$failure" | Should -Match 'rds:DescribeDBInstances'
        @(Get-BastionSession).Count | Should -Be $before
        # -RemoteHost needs no rds:Describe* at all.
        $s = Start-BastionSession -Target $Bastion -RemoteHost $Rds.endpoint @op -ErrorAction Stop 6>$null
        $s | Stop-BastionSession -ErrorAction Stop
    }
}
