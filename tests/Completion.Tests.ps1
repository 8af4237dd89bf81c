#Requires -Version 7.0
# Tab completion as a user gets it (TabExpansion2), for profiles, regions, bastion targets and open sessions.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox -ExtraArguments @('--rds')
    $script:Aws = $Sandbox.Aws
    function Complete([string] $Line) { (TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches }
}

AfterAll {
    Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
    Stop-TestSandbox $Sandbox
}

Describe 'Argument completion' {
    It 'completes profile names from the AWS config and credentials files' {
        $home2 = Join-Path ([IO.Path]::GetTempPath()) ('bt-home-' + [guid]::NewGuid().ToString('n'))
        New-Item -ItemType Directory -Path (Join-Path $home2 '.aws') -Force | Out-Null
        Set-Content (Join-Path $home2 '.aws/config') @('[default]', 'region = eu-west-1', '[profile dev-admin]', 'region = us-east-1', '[sso-session corp]', 'sso_region = us-east-1')
        Set-Content (Join-Path $home2 '.aws/credentials') @('[deploy]', 'aws_access_key_id = AKIDEXAMPLE', 'aws_secret_access_key = x')
        $saved = $env:HOME, $env:AWS_CONFIG_FILE, $env:AWS_SHARED_CREDENTIALS_FILE
        try {
            $env:HOME = $home2; $env:AWS_CONFIG_FILE = $null; $env:AWS_SHARED_CREDENTIALS_FILE = $null
            (Complete 'New-RdsIamToken -ProfileName d').CompletionText | Should -Be @('default', 'deploy', 'dev-admin')
            (Complete 'New-RdsIamToken -ProfileName c').CompletionText | Should -BeNullOrEmpty   # sso-session sections are not profiles
        }
        finally { $env:HOME, $env:AWS_CONFIG_FILE, $env:AWS_SHARED_CREDENTIALS_FILE = $saved; Remove-Item $home2 -Recurse -Force }
    }

    It 'quotes profile names PowerShell would not read back as they are (quotes, spaces, $, ;)' {
        $home2 = Join-Path ([IO.Path]::GetTempPath()) ('bt-home-' + [guid]::NewGuid().ToString('n'))
        New-Item -ItemType Directory -Path (Join-Path $home2 '.aws') -Force | Out-Null
        $names = @("o'brien", "q' + `$(Get-Date) + '", 'qa team', 'q$env:PATH;x', "q'; Remove-Item x; '", "q$([char]0x2019)typographic")
        Set-Content (Join-Path $home2 '.aws/config') ($names | ForEach-Object { "[profile $_]"; 'region = eu-west-1' })
        $saved = $env:HOME, $env:AWS_CONFIG_FILE, $env:AWS_SHARED_CREDENTIALS_FILE
        try {
            $env:HOME = $home2; $env:AWS_CONFIG_FILE = $null; $env:AWS_SHARED_CREDENTIALS_FILE = $null
            (Complete "New-RdsIamToken -ProfileName o").CompletionText | Should -Be @("'o''brien'")
            $completed = Complete "New-RdsIamToken -ProfileName q"
            $completed.Count | Should -Be 5
            foreach ($m in $completed) {
                $m.CompletionText | Should -Match "^'.*'$"
                # Read back by PowerShell, the completion is exactly the profile name: nothing expanded, nothing run.
                $errs = $null
                $ast = [System.Management.Automation.Language.Parser]::ParseInput("x $($m.CompletionText)", [ref] $null, [ref] $errs)
                $errs | Should -BeNullOrEmpty
                $ast.EndBlock.Statements[0].PipelineElements[0].CommandElements[1].Value | Should -BeIn $names
                $ast.EndBlock.Statements[0].PipelineElements[0].CommandElements[1].Value | Should -Be $m.ListItemText
            }
            # A word typed with a doubled quote still completes.
            (Complete "New-RdsIamToken -ProfileName 'o''b").CompletionText | Should -Be @("'o''brien'")
        }
        finally { $env:HOME, $env:AWS_CONFIG_FILE, $env:AWS_SHARED_CREDENTIALS_FILE = $saved; Remove-Item $home2 -Recurse -Force }
    }

    It 'completes region codes' {
        (Complete 'Get-BastionInstance -Region eu-west-').CompletionText | Should -Be @('eu-west-1', 'eu-west-2', 'eu-west-3')
    }

    It 'completes bastion targets from EC2 and SSM, showing their Name tags' {
        $saved = $env:AWS_ACCESS_KEY_ID, $env:AWS_SECRET_ACCESS_KEY, $env:AWS_REGION
        try {
            $env:AWS_ACCESS_KEY_ID = $Aws.AccessKey; $env:AWS_SECRET_ACCESS_KEY = $Aws.SecretKey; $env:AWS_REGION = $Aws.Region
            $matches = Complete "Start-BastionSession -EndpointUrl $($Aws.EndpointUrl) -Target i-0a1b"
            $matches.CompletionText | Should -Contain 'i-0a1b2c3d4e5f60001'
            ($matches | Where-Object CompletionText -eq 'i-0a1b2c3d4e5f60001').ListItemText | Should -Be 'i-0a1b2c3d4e5f60001 (bastion)'
            (Complete "Start-BastionSession -EndpointUrl $($Aws.EndpointUrl) -Target bastion-leg").CompletionText | Should -Be 'i-0a1b2c3d4e5f60002'
        }
        finally { $env:AWS_ACCESS_KEY_ID, $env:AWS_SECRET_ACCESS_KEY, $env:AWS_REGION = $saved }
    }

    It 'completes -Connection with the variables that hold an open IAM connection' {
        $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
        foreach ($a in '-X', '-q', '-h', '127.0.0.1', '-p', "$($Sandbox.postgres.port)", '-U', $Sandbox.postgres.user, '-d', $Sandbox.postgres.database, '-c', 'CREATE ROLE completer_user LOGIN; GRANT rds_iam TO completer_user') { $psi.ArgumentList.Add($a) }
        $psi.Environment['PGPASSWORD'] = $Sandbox.postgres.password
        [System.Diagnostics.Process]::Start($psi).WaitForExit()
        $global:btCompletionConn = Connect-IamPostgres -Name bastion -DbHost $Sandbox.rds.endpoint -Database $Sandbox.postgres.database -UserName completer_user -SslRootCertificate $Sandbox.rds.caBundle @Aws
        try {
            (Complete 'Invoke-IamPostgresQuery -Query "select 1" -Connection $btComp').CompletionText | Should -Be '$btCompletionConn'
            (Complete 'Disconnect-IamPostgres -Connection ').CompletionText | Should -Contain '$btCompletionConn'
            $btCompletionConn | Disconnect-IamPostgres
            (Complete 'Disconnect-IamPostgres -Connection ').CompletionText | Should -Not -Contain '$btCompletionConn'
        }
        finally { Remove-Variable btCompletionConn -Scope Global -ErrorAction SilentlyContinue }
    }

    It 'completes the ids of open sessions' {
        $s = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost demo.c0ffee123456.us-west-2.rds.amazonaws.com -RemotePort $Sandbox.postgres.port @Aws 6>$null
        try {
            (Complete 'Get-BastionSession -SessionId sandbox-').CompletionText | Should -Contain $s.SessionId
            (Complete 'Stop-BastionSession -SessionId sandbox-').CompletionText | Should -Contain $s.SessionId
        }
        finally { $s | Stop-BastionSession }
    }
}
